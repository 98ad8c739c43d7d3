"""The paper's downstream protocols at the paper's sizes (GPU-sized), for corpora
you have locally. Tables 5-7 on IEMOCAP or MELD:

    python -m mced_jax.main --config=configs/paper.py:iemocap --workdir=runs/iemocap \
        --config.finetune.root=/data/IEMOCAP_full_release \
        --config.data.root=/data/emoatmovie/manifest.csv --config.teacher.path=/models/bert-base-plus-teacher

    python -m mced_jax.main --config=configs/paper.py:meld --workdir=runs/meld \
        --config.finetune.root=/data/MELD.Raw ...

Distillation pairs come from a manifest (audio, text) of your unlabelled pair
corpus (the paper's EmoAT-Movie: movie clips with subtitles); the teacher is a
local fine-tuned BERT-base(+) directory (see the Teacher section of the README).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mced  # noqa: E402  (configs/mced.py, beside this file)


def get_config(arg: str | None = None):
  if arg not in ("iemocap", "meld"):
    raise ValueError(f"pick a corpus: configs/paper.py:iemocap or :meld (got {arg!r})")
  c = mced.get_config()
  c.stages = "data,distill,finetune"
  c.teacher.source = "path"  # a fine-tuned BERT-base(+) teacher directory
  c.distill.teacher_layers = (6, 8, 10, 12)  # paper, BERT-base
  c.distill.student_layers = (3, 4, 5, 6)
  c.distill.batch_size = 256  # CHOICE: an accelerator-sized global batch
  c.distill.num_steps = 20000  # CHOICE: set for ~50 epochs of your pair corpus (paper)
  c.distill.checkpoint_every = 1000
  c.distill.log_every = 100
  c.dtype = "bfloat16"
  c.data.corpus = "manifest"  # --config.data.root=<pair manifest.csv>
  c.finetune.corpus = arg
  c.finetune.seeds = (0, 1, 2)  # paper: 3 runs
  c.finetune.tables = "5,6,7"
  c.finetune.epochs = 20
  c.finetune.learning_rate = 1e-4
  if arg == "iemocap":
    c.finetune.protocol = "leave_session_out"  # 10 speaker-independent folds
    c.finetune.select_metric = "UAR"
  else:
    c.finetune.protocol = "split"  # official train/dev/test
    c.finetune.select_metric = "WF1"
  return c
