# StreamSocial async-producer lab.  `make lab` to learn, `make test` to check everything.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
LOCK   := requirements.lock

.PHONY: setup lock lab test test-unit lint notebooks bench broker-up broker-down doctor clean kafka-image

## reproducible: every package at the version and hash in requirements.lock (Python 3.11 on
## Linux x86_64; pip refuses a file whose hash differs), then lab_kit itself, editable, adding
## nothing (its build backend, setuptools, comes from the lock too). pyproject.toml keeps its
## ranges for those who use lab_kit as a library; `make lock` re-pins after changing them.
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

## re-pin requirements.lock from pyproject.toml (keeps every pin that still fits; UPGRADE=1
## moves everything to the newest allowed versions), with uv in a throw-away venv
lock:
	rm -rf .lock-tools && $(PYTHON) -m venv .lock-tools && .lock-tools/bin/pip install --quiet uv
	echo "setuptools>=68" | .lock-tools/bin/uv pip compile pyproject.toml - \
	    --extra test --extra notebooks --extra confluent --generate-hashes \
	    --python-version 3.11.7 --python-platform x86_64-unknown-linux-gnu \
	    --custom-compile-command "make lock" $(if $(UPGRADE),--upgrade) -o $(LOCK)
	rm -rf .lock-tools

## start the broker (reused if running) and open JupyterLab on the notebooks
lab: setup
	$(PY) -m lab_kit doctor || true
	$(PY) -m lab_kit broker up --topics
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=notebooks --ServerApp.ip=127.0.0.1 \
	    --ServerApp.allow_root=True

## lint, then every test (unit, real broker, notebooks, browser); stops a broker it started.
## Tests keep their broker's state in .lab-state/ of this checkout (not the lab's own broker:
## the tests create and kill a lot), so a student's `make lab` broker is left alone.
test: export LAB_STATE_DIR ?= $(CURDIR)/.lab-state
test: export LAB_SCALE ?= 0.2
## the suite's own broker is a local JVM (its tests drive JVM nodes); the Docker backend and
## compose have their own tests, which run when a daemon answers (skipped with the reason if not)
test: TEST_BACKEND ?= local
test: setup
	$(VENV)/bin/ruff check .
	@if $(PY) -m lab_kit broker status --check; then started=0; else started=1; fi; \
	$(PY) -m lab_kit broker up --backend $(TEST_BACKEND) --topics >/dev/null || exit $$?; \
	$(PY) -m pytest tests notebooks --nbval-lax --nbval-current-env \
	    --nbval-sanitize-with notebooks/sanitize.cfg -p no:cacheprovider; rc=$$?; \
	if [ $$started = 1 ]; then $(PY) -m lab_kit broker down; fi; \
	$(PY) -m lab_kit backend down >/dev/null 2>&1 || true; \
	exit $$rc

lint: setup
	$(VENV)/bin/ruff check .

## the unit tests alone: no broker, no network (a socket connect fails them), ~15 s
test-unit: setup
	$(PY) -m pytest tests/unit -p no:cacheprovider

## re-execute every notebook at LAB_SCALE=1 and store its outputs (figures included), with the
## lab_kit commit they came from in each notebook's metadata. Run it after changing an experiment.
notebooks: export LAB_SCALE = 1
notebooks: setup
	$(PY) -m lab_kit broker up --topics >/dev/null
	$(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace \
	    --ExecutePreprocessor.timeout=600 $(or $(NB),notebooks/[0-9]*.ipynb)
	$(PY) tests/notebooks/stamp_commit.py $(or $(NB),notebooks/[0-9]*.ipynb)

bench: setup
	$(PY) -m lab_kit bench --json bench.json

broker-up: setup
	$(PY) -m lab_kit broker up --topics
broker-down: setup
	$(PY) -m lab_kit broker down
doctor: setup
	$(PY) -m lab_kit doctor

## build streamsocial-lab/kafka:<version> with no registry (debootstrap + the Maven jars);
## cached: a second run with nothing changed takes seconds. Needs root and a Docker daemon.
kafka-image: setup
	PY=$(abspath $(PY)) docker/build-kafka-image.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
