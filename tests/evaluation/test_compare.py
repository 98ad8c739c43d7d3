"""python -m mced_jax.evaluation.compare: paired differences, held-out folds, ensembles, a reference."""

import importlib
import os

import pytest

from mced_jax.evaluation import compare

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


def test_paired_differences_with_intervals_and_a_held_out_fold(tmp_path, capsys):
  folds = ["fold1_test_1-3", "fold2_test_4-6", "fold3_test_7-9", "fold6_test_16-18"]
  uar = {}
  for i, fold in enumerate(folds):
    for s in (0, 1):
      uar[(compare.SCRATCH, fold, s)] = 0.5 + 0.01 * s
      # +MCED: +0.10, -0.05, +0.04 on the selection folds; +0.20 on the held-out one
      uar[(compare.MCED, fold, s)] = 0.5 + 0.01 * s + (0.10, -0.05, 0.04, 0.20)[i]
  w = str(tmp_path / "real_speaker")
  _write(w, uar)
  rows = compare.read_runs(w)
  assert all(r["fraction"] == "1.0" for r in rows)  # Table-7 rows ignored
  s = compare.summarize(rows, ["fold6"])
  sel = s[compare.MCED]["select"]["UAR"]
  assert sel[2] == 6 and abs(s[compare.MCED]["holdout"]["UAR"][0] - 0.705) < 1e-9
  r = compare.against_scratch(rows, compare.MCED, "UAR", ["fold6"])
  # fold differences 0.10, -0.05, 0.04 (the held-out fold is not among them)
  assert r.folds == 3 and abs(r.mean - 0.03) < 1e-9 and (r.folds_up, r.folds_down) == (2, 1)
  assert r.t_low < 0 < r.t_high  # sd 0.0755 over 3 folds: the interval spans 0
  assert compare.main(["compare", w, "--holdout=fold6", f"--out={tmp_path / 'c.md'}",
                       f"--plot={tmp_path / 'c.png'}"]) == 0
  text = open(tmp_path / "c.md").read()
  assert open(tmp_path / "c.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  assert f"Forest plot of the UAR differences: `{tmp_path / 'c.png'}`." in text
  assert f"| real_speaker | {compare.MCED} | 0.535 ± 0.068" in text
  assert (f"| real_speaker: {compare.MCED} − {compare.SCRATCH} | +0.030 "
          f"[{compare._fmt(r.t_low)}, {compare._fmt(r.t_high)}] | {r.p_t:.2g} |") in text
  assert "| 2/1 (1) | 4/2 |" in text  # folds up/down (sign p), runs up/down
  assert "fold6_test_16-18" in capsys.readouterr().out
  # without a held-out fold every fold counts
  assert compare.against_scratch(rows, compare.MCED).folds == 4


def test_seed_ensembles_and_a_reference_recipe_are_compared_pairwise(tmp_path):
  folds = ["fold1_test_1-3", "fold2_test_4-6", "fold3_test_7-9"]
  uar = {(v, f, s): 0.5 for v in (compare.SCRATCH, compare.MCED) for f in folds for s in (0, 1)}
  w = str(tmp_path / "recipe")
  _write(w, uar)
  with open(os.path.join(w, "finetune", "table5_ensembles.csv"), "w") as f:
    f.write(HEADER)
    for i, fold in enumerate(folds):
      for v, u in ((compare.SCRATCH, 0.7), (compare.MCED, (0.6, 0.8, 0.9)[i])):
        f.write(f"{v} (2-seed ensemble),1.0,{fold},ensemble,-1,432,{u},{u},{u},{u},"
                "nan,nan,nan,nan\n")
  rows = compare.read_runs(w)
  ens = f"{compare.MCED} (2-seed ensemble)"
  r = compare.against_scratch(rows, ens)
  assert r.folds == 3 and r.runs == 3 and abs(r.mean - (-0.1 + 0.1 + 0.2) / 3) < 1e-9
  assert compare.against_scratch(rows, compare.MCED).mean == 0
  better = str(tmp_path / "better")
  _write(better, {k: v + (0.05 if k[0] == compare.MCED else 0) for k, v in uar.items()})
  text = compare.report([w, better], [], reference=w)
  assert f"| recipe | {ens} | 0.767 ± 0.153" in text
  assert f"| better − recipe: {compare.MCED} | +0.050 [+0.050, +0.050] |" in text
  assert "| recipe: " + ens in text


@pytest.mark.parametrize("tool", ["mced_jax.evaluation.compare", "mced_jax.tools.predict", "data_pipelines.prepare"])
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
