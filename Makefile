# The two commands a newcomer needs:  `make run` (set up + train)  and  `make test` (set up + the quick tests).
# `make test-all` runs every tier (what CI runs: .ci/run).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.resnets-installed
EXP    ?= cnn
DATA   ?=# empty: the library's own lookup ($RESNETS_DATA, ../shared/data, fastai's folder, then a download)
ARGS   ?=

.PHONY: setup run test test-all lint docs notebooks gpu-data gpu-plan
setup: $(STAMP)

# torch is pinned here, not in pyproject: 2.14.1/0.29.1 are the builds this project is tested with
# (and the ones pip finds on the development machines' disk).
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: setup
	RESNETS_DATA_HINT='make run DATA=/path/to/{folder}' $(VENV)/bin/resnets run $(EXP) $(if $(DATA),--data $(DATA)) $(ARGS)

test: setup
	$(PY) -m pytest -m "not slow" $(ARGS)

test-all: setup
	$(PY) -m pytest $(ARGS)

# docs/options.md is generated from the record and the command line (tests/test_docs.py checks it is current)
docs: setup
	$(PY) -c "from resnets.reference import reference; open('docs/options.md', 'w').write(reference())"

lint: setup
	$(VENV)/bin/ruff check resnets tests scripts

# every notebook executed at its full settings into itself, in the background, notebook by notebook (resumable:
# those already executed from their current source are skipped; ARGS="--force" or names such as ARGS=03 to choose)
notebooks: setup
	mkdir -p results/notebooks
	nohup $(PY) scripts/notebooks.py $(ARGS) >> results/notebooks/execute.log 2>&1 &
	@echo "executing in the background (hours on a CPU): tail -f results/notebooks/execute.log"

# the GPU run's luggage (scripts/gpu.sh): Imagenette re-encoded to ~40 MiB, and fastai's wheels (the machine has none)
gpu-data: setup
	$(PY) scripts/gpu_data.py --src $(or $(DATA),../shared/data/imagenette2-160) --dest .data/imagenette2-160-gpu
	mkdir -p .whl && cp ../shared/wheels-gpu/*.whl .whl/

# everything the GPU run checks but CUDA, here (after gpu-data)
gpu-plan: setup
	PYTHON=$(PY) bash scripts/gpu.sh --plan /tmp/resnets-gpu-plan
