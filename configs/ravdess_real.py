"""RAVDESS from real distillation pairs: pair sets and recipe ingredients (exploratory).

Run from the repository root; every variant has its own work dir under
runs/ravdess_real/ and shares the teacher, the prepared pair sets and the prepared
RAVDESS corpus there (each stage skips finished work, every fine-tuning run is
cached, so an interrupted job resumes where it stopped):

    python -m mced_jax.main --config=configs/ravdess_real.py:teacher \
        --workdir=runs/ravdess_real/teacher                    # once, ~21 min
    python -m mced_jax.main --config=configs/ravdess_real.py:real,speaker \
        --workdir=runs/ravdess_real/real_speaker

Times on 2 cores, one job alone: `real,speaker` (data 8 min, distillation ~19
min, 36 fine-tuning runs ~50 min) ~1.3 h; a `folds5` variant that distils again
~20 min + 15 runs (~21 min), one that only changes fine-tuning 30 runs (~45 min).
The best recipe, `demo,speaker,stats,ep20,pat5,spknorm,aug`, fine-tunes the
`demo,speaker,stats` student (run that first; ~5-7 min to distil): 36 runs ~45 min
on a fast 2-core machine, ~100 min on a slow one. With 3 seeds the report also
has each variant's 3-seed ensemble (finetune.seed_ensemble).
So the full set of variants takes hours: every stage skips finished work.

The variant is a comma-separated list:
  pairs (one of):  demo  -- today's espeak-ng demo corpus + 32 LJSpeech pairs (57 min)
                   demoflat -- the same sentences and voices, every class spoken with
                              the neutral prosody (control), + the 32 LJSpeech pairs
                   real  -- ../shared/data/audio/pairs_real (6.8 h of read speech)
                   both  -- the two together
  ingredients:     speaker -- per-speaker standardisation, in the pairs and in
                              fine-tuning (no labels; legitimate for test speakers)
                   words   -- feature-level loss over word tokens only
                   stats   -- the student pools mean + std over frames instead of
                              the paper's max (an architecture change: distils again)
                   mstats  -- mean + std pooled from every level of the student
                   lldstats -- the input LLDs' mean + std also reach the classifier
                              (the classic functionals inside the student)
                   conf<P> -- keep pairs whose teacher confidence >= P (e.g. conf0.5)
                   ep<N>   -- N fine-tuning epochs (best validation epoch selected)
                   aug     -- SpecAugment-style time and feature masking
                   spknorm -- the pooled vector standardised per speaker before the
                              classifier (fine-tuning only; groups of 8 in training)
                   pat<N>  -- early stopping: end a run after N epochs without a
                              better validation UAR
                   folds5  -- only folds 1-5 (choosing ingredients; fold 6 stays unseen)
                   d256    -- a d256 student (conv 256, MLP 512) instead of d128
                   shuffled -- control: each clip distilled from another pair's
                              transcript (every teacher target moves with it)
                   supervised -- control: pretraining on the demo's own prosody
                              labels (cross-entropy), no teacher
The paper's recipe is `demo`/`real`/`both` without ingredients.

Fine-tuning-only parts (ep<N>, pat<N>, aug, folds5) do not change distillation: such
a variant fine-tunes the student distilled by the variant without them (e.g.
`real,speaker,aug,folds5` uses runs/ravdess_real/real_speaker/distill/student), so
run that one first (`make ravdess-real` runs the variants in the order given).

Long-utterance rule (CHOICE): LibriSpeech readings run to 17.3 s here (80 % are
over 10 s). Pairs up to 18 s are kept whole, with frame buckets up to 1800 frames
and 96 WordPieces; longer pairs are dropped at preparation and counted in
report.json (`dropped_long`), never cut, since a cut clip would keep a transcript
whose end the student never hears.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ravdess  # noqa: E402  (configs/ravdess.py, beside this file)

RUNS = "runs/ravdess_real"
PAIRS_REAL = "../shared/data/audio/pairs_real"
REAL_MANIFESTS = [f"{PAIRS_REAL}/{d}/manifest.csv" for d in (
    "mini_librispeech", "kathleen_arctic", "ljspeech_extra", "speechocean762")]


PAIR_SETS = ("demo", "demoflat", "real", "both")


def _finetune_only(part: str) -> bool:
  return part in ("aug", "folds5", "spknorm") or (part[:2] == "ep" and part[2:].isdigit()) or (
      part[:3] == "pat" and part[3:].isdigit())


def get_config(arg: str | None = None):
  c = ravdess.get_config()
  parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
  if parts == ["teacher"]:
    c.stages = "teacher_cls"
    return c
  pairs = [p for p in parts if p in PAIR_SETS]
  if len(pairs) != 1:
    raise ValueError(f"variant {arg!r}: name one pair set ({', '.join(PAIR_SETS)}), or "
                     "'teacher'")
  pairs, rest = pairs[0], [p for p in parts if p not in PAIR_SETS]
  c.stages = "data,distill,finetune"
  base = [p for p in parts if not _finetune_only(p)]
  if len(base) < len(parts):  # distilled once by the variant without these parts
    c.stages = "finetune"
    c.finetune.init_dir = f"{RUNS}/{'_'.join(base)}/distill/student"
  c.teacher.source = "path"
  c.teacher.path = f"{RUNS}/teacher/teacher_cls/model"
  c.finetune.data_path = f"{RUNS}/data/ravdess"  # prepared once, shared
  c.finetune.cache_dir = f"{RUNS}/finetune_runs"  # Student-MCED runs shared by variants
  c.distill.teacher_report = True  # distill/teacher_on_pairs.json
  # RAVDESS's buckets, whatever the pairs' are: one fine-tuning setup (and one
  # Student-MCED cache) for every pair set.
  c.finetune.frame_buckets = (250, 500, 1000, 1400, 1800)
  speaker = "speaker" in rest
  # Pair sets, each prepared once per normalisation.
  if pairs in ("demo", "demoflat"):
    extra = ["ljspeech:../shared/data/audio/ljspeech_32"]
    c.data.demo_prosody = "flat" if pairs == "demoflat" else "class"
  elif pairs == "real":
    c.data.corpus, c.data.root = "manifest", REAL_MANIFESTS[0]
    extra = [f"manifest:{m}" for m in REAL_MANIFESTS[1:]]
  else:
    extra = (["ljspeech:../shared/data/audio/ljspeech_32"]
             + [f"manifest:{m}" for m in REAL_MANIFESTS])
  c.data.extra_corpora = ",".join(extra)
  c.data.path = f"{RUNS}/data/pairs_{pairs}_{'speaker' if speaker else 'global'}"
  if pairs == "real":
    c.data.split = "train"  # manifests put every pair in train
  if pairs not in ("demo", "demoflat"):
    c.data.max_pair_seconds = 18.0
    c.data.max_frames = 1800
    c.data.frame_buckets = (250, 500, 1000, 1400, 1800)
    c.data.max_tokens = 96
    # CHOICE (CPU budget): the demo run's 600 steps of 16 (9,600 pairs: ~2.4
    # epochs of the 4k real pairs); each step is ~4x a demo step (longer clips).
    c.distill.num_steps = 600
    c.distill.checkpoint_every = 100
  for p in rest:
    if p == "speaker":
      c.data.normalize = "speaker"
      c.finetune.normalize = "speaker"
    elif p == "words":
      c.distill.fl_tokens = "words"
    elif p in ("stats", "mstats"):
      c.student.pooling = p
    elif p == "lldstats":
      c.student.input_stats = True
    elif p.startswith("conf"):
      c.distill.min_teacher_confidence = float(p[4:])
    elif p.startswith("ep"):
      c.finetune.epochs = int(p[2:])
    elif p.startswith("pat"):
      c.finetune.patience = int(p[3:])
    elif p == "aug":  # CHOICE: 2 time spans of <= 40 frames, 2 bands of <= 13 dims
      c.finetune.augment.time_masks, c.finetune.augment.feature_masks = 2, 2
    elif p == "spknorm":
      c.student.speaker_norm = True
    elif p == "folds5":
      c.finetune.max_folds = 5
    elif p == "shuffled":
      c.distill.targets = "shuffled"
    elif p == "supervised":
      if pairs not in ("demo", "demoflat"):
        raise ValueError(f"variant {arg!r}: 'supervised' needs the demo's labels")
      c.distill.targets = "labels"
    elif p == "d256":  # a larger student: twice the width, ~3.5x the compute
      c.student.conv_channels = (256, 256, 256, 256)
      c.student.d_model, c.student.mlp_dim, c.student.classifier_hidden = 256, 512, 256
    else:
      raise ValueError(f"variant {arg!r}: unknown part {p!r} (see configs/ravdess_real.py)")
  c.finetune.reference = {  # same folds; README, RAVDESS
      "name": "ComParE functionals + SVM, per-speaker standardised", "UAR": 0.699}
  return c
