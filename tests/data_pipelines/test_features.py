"""IS16 features: shape, rate, alignment, resampling and bad audio."""

import numpy as np
import pytest

from data_pipelines import features as F
from tests.data_pipelines.fixtures import write_corrupt, write_wav


@pytest.fixture(scope="module")
def extractor():
  return F.IS16Extractor()


def test_130_dims_at_100_frames_per_second(extractor):
  x = F.load_audio(write_wav("/tmp/mced_test_feat/a.wav", 2.0))
  feats = extractor(x)
  assert feats.shape[1] == 130 and feats.dtype == np.float32
  assert abs(feats.shape[0] - 200) <= 6  # 100 frames/s
  assert np.isfinite(feats).all()


def test_llds_and_deltas_are_aligned(extractor):
  import opensmile
  x = F.load_audio(write_wav("/tmp/mced_test_feat/b.wav", 1.3, seed=1))
  lld = opensmile.Smile(opensmile.FeatureSet.ComParE_2016, "lld").process_signal(x, 16000)
  de = opensmile.Smile(opensmile.FeatureSet.ComParE_2016, "lld_de").process_signal(x, 16000)
  assert len(de) == len(lld) + 2  # the 2-frame difference the pipeline must absorb
  feats = extractor(x)
  assert feats.shape[0] == len(lld)
  np.testing.assert_array_equal(feats[:, :65], lld.to_numpy(np.float32))
  np.testing.assert_array_equal(feats[:, 65:], de.to_numpy(np.float32)[: len(lld)])


def test_44k_stereo_is_resampled_to_16k_mono(tmp_path):
  p = write_wav(str(tmp_path / "s.wav"), 1.0, sr=44100, channels=2)
  x = F.load_audio(p)
  assert x.ndim == 1 and abs(x.size - 16000) <= 2


def test_bad_audio_is_named_and_explained(tmp_path, extractor):
  corrupt = write_corrupt(str(tmp_path / "broken.wav"))
  with pytest.raises(F.BadAudio, match="broken.wav: unreadable"):
    F.load_audio(corrupt)
  with pytest.raises(F.BadAudio, match="not found"):
    F.load_audio(str(tmp_path / "missing.wav"))
  short = F.load_audio(write_wav(str(tmp_path / "short.wav"), 0.2))
  with pytest.raises(F.BadAudio, match="too short"):
    F.check_signal("short.wav", short, min_seconds=0.5)
  with pytest.raises(F.BadAudio, match="silent"):
    F.check_signal("quiet.wav", np.zeros(16000, np.float32), min_seconds=0.5)
  import soundfile as sf
  sf.write(str(tmp_path / "empty.wav"), np.zeros(0, np.float32), 16000)
  with pytest.raises(F.BadAudio, match="empty"):
    F.load_audio(str(tmp_path / "empty.wav"))


def test_extract_many_skips_bad_and_resumes(tmp_path):
  good = [(f"g{i}", write_wav(str(tmp_path / f"g{i}.wav"), 1.0, seed=i)) for i in range(3)]
  bad = [("bad", write_corrupt(str(tmp_path / "bad.wav"))),
         ("short", write_wav(str(tmp_path / "short.wav"), 0.2))]
  cache = str(tmp_path / "cache")
  rep = F.extract_many(good + bad, cache, num_workers=1, progress=False)
  assert sorted(rep.ok) == ["g0", "g1", "g2"]
  assert set(rep.skipped) == {"bad", "short"}
  assert "bad.wav" in rep.skipped["bad"] and "too short" in rep.skipped["short"]
  assert rep.audio_seconds == pytest.approx(3.0, abs=0.01) and rep.rtf_per_core > 0
  # A re-run finds everything cached and extracts nothing.
  rep2 = F.extract_many(good, cache, num_workers=1, progress=False)
  assert sorted(rep2.ok) == ["g0", "g1", "g2"] and rep2.workers == 0
