"""The pre-registered RAVDESS comparison (docs/experiments/protocol.md): arms and controls.

    python -m mced_jax.main --config=configs/ravdess_real.py:teacher \
        --workdir=runs/ravdess_real/teacher                     # once
    python -m mced_jax.main --config=configs/evidence.py:mced_demo \
        --workdir=runs/evidence/mced_demo                       # one arm
    make evidence                                               # every arm, then the report

Every arm distils its own student (distillation seed 0) and fine-tunes it with one
frozen recipe on all 6 folds x 5 fine-tuning seeds; the scratch student
(Student−MCED) of the same fine-tuning recipe is in every work dir, trained once
(the run cache is shared). Nothing here is tuned: the recipe is the one the
repository already had, taken as it stands for every arm.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ravdess_real  # noqa: E402  (configs/ravdess_real.py, beside this file)

RECIPE = "speaker,stats,ep20,pat5,spknorm,aug"  # frozen for every per-speaker arm
SEEDS = (100, 101, 102, 103, 104)  # fresh: no earlier run used them
ARMS = {
    # primary: MCED from the demo pairs (espeak prosody per class + 32 LJSpeech)
    "mced_demo": f"demo,{RECIPE}",
    # controls on the same pairs / recipe
    "shuffled": f"demo,shuffled,{RECIPE}",  # teacher targets of another pair
    "flat": f"demoflat,{RECIPE}",  # one neutral prosody for every class
    "supervised": f"demo,supervised,{RECIPE}",  # prosody labels, no teacher
    "real": f"real,{RECIPE}",  # 6.8 h of real read speech
    "both": f"both,{RECIPE}",  # demo + real pairs
    # fold-standardised (no per-speaker statistics anywhere): MCED demo vs scratch
    "mced_demo_fold": "demo,stats,ep20,pat5,aug",
}


def get_config(arg: str | None = None):
  if arg not in ARMS:
    raise ValueError(f"unknown arm {arg!r}; known: {', '.join(ARMS)}")
  c = ravdess_real.get_config(ARMS[arg])
  c.stages = "data,distill,finetune"
  c.finetune.init_dir = ""  # this work dir's own distilled student
  c.finetune.seeds = SEEDS
  c.finetune.max_folds = 0  # all 6 folds
  # The run records are kept in docs/experiments/evidence/ without their models, so
  # a cached run never needs one.
  c.finetune.export_models = False
  return c
