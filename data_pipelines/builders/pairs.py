"""TFDS builder for MCED utterances: IS16 features + WordPiece ids (+ label).

One builder class serves every corpus; the corpus is a BuilderConfig whose name is
the corpus name, so data lands in `<data_dir>/mced_pairs/<corpus>/1.0.0/`. The
examples come from already extracted feature caches (see features.py), so building
the shards (TFRecord or ArrayRecord) is cheap and deterministic. Each TFDS split is
one *part*: one frame bucket of one split (data_pipelines/index.py), written in
the order given (shuffling off) into `num_shards` shards; every example carries
its `row` in records.jsonl.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from data_pipelines import tf_compat

tfds = tf_compat.tfds()

from data_pipelines import features as feat_lib


ENCODINGS = ("bytes", "none")


def features_dict(label_names=(), feature_dtype: str = "float16",
                  tensor_encoding: str = "none"):
  """The example features, shared by the writer and the readers.

  `tensor_encoding="bytes"` stores the feature and token arrays as their raw
  bytes: float16 features take 2 bytes a value on disk and decode as a buffer
  view. "none" (TFDS's default, and datasets prepared before the option) stores
  them as protobuf number lists: 4 bytes a value, and decoding them value by value
  cost ~5 ms per 4-s utterance in numpy."""
  dtype = {"float16": np.float16, "float32": np.float32}[feature_dtype]
  if tensor_encoding not in ENCODINGS:
    raise ValueError(f"tensor_encoding={tensor_encoding!r}; known: {', '.join(ENCODINGS)}")
  enc = (tfds.features.Encoding.BYTES if tensor_encoding == "bytes"
         else tfds.features.Encoding.NONE)
  feats = {
      "row": tfds.features.Scalar(dtype=np.int64),
      "acoustic": tfds.features.Tensor(shape=(None, feat_lib.FEATURE_DIM), dtype=dtype,
                                       encoding=enc),
      "input_ids": tfds.features.Tensor(shape=(None,), dtype=np.int32, encoding=enc),
      "speaker": tfds.features.Text(),
      "utt_id": tfds.features.Text(),
      "duration": tfds.features.Scalar(dtype=np.float32),
      "transcript": tfds.features.Text(),
  }
  if label_names:
    feats["label"] = tfds.features.ClassLabel(names=list(label_names))
  return tfds.features.FeaturesDict(feats)


@dataclasses.dataclass(eq=False)
class PairsConfig(tfds.core.BuilderConfig):
  label_names: tuple = ()  # empty: unlabelled pairs (no `label` feature)
  manual: bool = False  # licensed corpus read from the user's manual_dir
  feature_dtype: str = "float16"
  tensor_encoding: str = "bytes"


class MCEDPairs(tfds.core.GeneratorBasedBuilder):
  """Utterances with acoustic features, tokens and metadata."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "IS16 ComParE LLD+delta (130-d) features, WordPiece ids."}
  # Licensed corpora cannot be downloaded: the user places them and names the folder.
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  IEMOCAP: request IEMOCAP_full_release from https://sail.usc.edu/iemocap/ and pass
  its folder (with Session1..5) as --root; MELD: the official CSVs plus the clip
  folders (train_splits, dev_splits_complete, output_repeated_splits_test) as --root.
  """

  def __init__(self, *, records_by_part=None, cache_dir=None, tokens_by_id=None,
               normalize=None, **kwargs):
    # Inputs for generation; absent when the builder only reads prepared data.
    # `records_by_part`: part name -> [(row, Utterance)] in write order.
    # `normalize`: utt_id -> (mean, std) standardises features before storage
    # (float16); one pair for all utterances, or each speaker's own.
    self._normalize = normalize
    self._records_by_part = records_by_part or {}
    self._cache_dir = cache_dir
    self._tokens = tokens_by_id or {}
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    return tfds.core.DatasetInfo(builder=self, description=cfg.description, disable_shuffling=True,
                                 features=features_dict(cfg.label_names, cfg.feature_dtype,
                                                       cfg.tensor_encoding))

  def _split_generators(self, dl_manager):
    # Licensed corpora are prepared from the user's manual_dir (checked here so a
    # wrong path fails with TFDS's instructions); the others need no download.
    if self.builder_config.manual:
      _ = dl_manager.manual_dir
    return {part: self._generate_examples(recs) for part, recs in self._records_by_part.items()}

  def _generate_examples(self, records):
    cfg = self.builder_config
    for row, r in records:
      x = feat_lib.load_cached(self._cache_dir, r.utt_id)
      if self._normalize is None:
        stored = x
      else:
        mean, std = self._normalize(r.utt_id)
        stored = (x - mean) / std
      stored = stored.astype(cfg.feature_dtype)
      if not np.isfinite(stored).all():
        raise ValueError(f"{r.audio_path}: features overflow {cfg.feature_dtype} storage")
      ex = {
          "row": np.int64(row),
          "acoustic": stored,
          "input_ids": self._tokens[r.utt_id],
          "speaker": r.speaker,
          "utt_id": r.utt_id,
          "duration": np.float32(x.shape[0] / feat_lib.FRAME_RATE),
          "transcript": r.text,
      }
      if cfg.label_names:
        ex["label"] = r.label
      yield r.utt_id, ex
