"""python -m mced_jax.compare: selection folds vs the held-out fold, wins."""

import importlib
import os

import pytest

from mced_jax import compare

HEADER = ("variant,fraction,fold,seed,best_epoch,train_utterances,test_WA,test_UAR,test_F1,"
          "test_WF1,val_WA,val_UAR,val_F1,val_WF1\n")


def _write(workdir, uar):
  """uar: {(variant, fold, seed): UAR}; the other metrics copy it."""
  os.makedirs(os.path.join(workdir, "finetune"))
  with open(os.path.join(workdir, "finetune", "table5_runs.csv"), "w") as f:
    f.write(HEADER)
    for (v, fold, seed), u in uar.items():
      f.write(f"{v},1.0,{fold},{seed},3,432,{u},{u},{u},{u},0,0,0,0\n")
    f.write(f"{compare.MCED} 1/2,0.5,fold1_test_1-3,0,3,216,0.1,0.1,0.1,0.1,0,0,0,0\n")


def test_holdout_fold_is_kept_apart_and_wins_are_counted(tmp_path, capsys):
  folds = ["fold1_test_1-3", "fold2_test_4-6", "fold6_test_16-18"]
  uar = {}
  for i, fold in enumerate(folds):
    for s in (0, 1):
      uar[(compare.SCRATCH, fold, s)] = 0.5
      # +MCED wins fold1 in both seeds, loses fold2 in both, wins the held-out fold
      uar[(compare.MCED, fold, s)] = {0: 0.6, 1: 0.4, 2: 0.7}[i] + 0.01 * s
  w = str(tmp_path / "real_speaker")
  _write(w, uar)
  rows = compare.read_runs(w)
  assert all(r["fraction"] == "1.0" for r in rows)  # Table-7 rows ignored
  s = compare.summarize(rows, ["fold6"])
  sel = s[compare.MCED]["select"]["UAR"]
  assert abs(sel[0] - (0.6 + 0.61 + 0.4 + 0.41) / 4) < 1e-9 and sel[2] == 4
  assert abs(s[compare.MCED]["holdout"]["UAR"][0] - 0.705) < 1e-9
  assert compare.wins(rows, ["fold6"]) == {"select": (1, 2, 2, 4), "holdout": (1, 1, 2, 2)}
  assert compare.main(["compare", w, "--holdout=fold6", f"--out={tmp_path / 'c.md'}"]) == 0
  text = open(tmp_path / "c.md").read()
  assert "| real_speaker | Student+MCED | 0.505 ± 0.116" in text
  assert "1/2 / 2/4 (held out: 1/1 / 2/2)" in text
  assert "fold6_test_16-18" in capsys.readouterr().out


def test_seed_ensembles_are_extra_rows_with_their_own_wins(tmp_path):
  folds = ["fold1_test_1-3", "fold2_test_4-6", "fold6_test_16-18"]
  uar = {(v, f, s): 0.5 for v in (compare.SCRATCH, compare.MCED) for f in folds for s in (0, 1)}
  w = str(tmp_path / "recipe")
  _write(w, uar)
  with open(os.path.join(w, "finetune", "table5_ensembles.csv"), "w") as f:
    f.write(HEADER)
    for i, fold in enumerate(folds):  # the MCED ensemble wins fold2 and fold6 only
      for v, u in ((compare.SCRATCH, 0.7), (compare.MCED, (0.6, 0.8, 0.9)[i])):
        f.write(f"{v} (2-seed ensemble),1.0,{fold},ensemble,-1,432,{u},{u},{u},{u},"
                "nan,nan,nan,nan\n")
  rows = compare.read_runs(w)
  ens = f"{compare.MCED} (2-seed ensemble)"
  assert compare.wins(rows, ["fold6"], ens) == {"select": (1, 2, 1, 2), "holdout": (1, 1, 1, 1)}
  assert compare.wins(rows, ["fold6"]) == {"select": (0, 2, 0, 4), "holdout": (0, 1, 0, 2)}
  text = compare.report([w], ["fold6"])
  assert f"| recipe | {ens} | 0.700 ± 0.141" in text
  assert "1/2 / 1/2 (held out: 1/1 / 1/1)" in text


@pytest.mark.parametrize("tool", ["mced_jax.compare", "mced_jax.predict", "data_pipelines.prepare"])
def test_help_and_bad_flags_are_answered_without_a_traceback(tool, capsys):
  main = importlib.import_module(tool).main
  with pytest.raises(SystemExit) as e:
    main(["tool", "--help"])
  out = capsys.readouterr().out
  assert e.value.code == 0 and out.startswith("usage: python -m " + tool) and "--out" in out
  with pytest.raises(SystemExit) as e:
    main(["tool", "--bogus=1", "x"])
  err = capsys.readouterr().err
  assert e.value.code == 2
  assert "Unknown command line flag 'bogus'" in err and "usage:" in err
