# Two commands for a fresh clone: `make run` and `make test`. Everything else is set up on demand.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
REQS := $(wildcard requirements/*.txt)

.PHONY: run test lint clean bench images images-test

$(STAMP): $(REQS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/torch-cpu.txt
	$(PY) -m pip install --quiet -r requirements/dev.txt -c requirements/constraints.txt
	touch $(STAMP)

## run: start the control plane (local runtime, embedded MLflow) at http://127.0.0.1:8000
run: $(STAMP)
	$(PY) -m app

## test: run the whole test suite
test: $(STAMP)
	$(PY) -m ruff check app models script tests benchmarks
	$(PY) -m pytest -q

## bench: the predict-path benchmark against the peers (run by hand; writes docs/benchmarks.md)
bench: $(STAMP)
	$(PY) benchmarks/run.py

## images: build the four container images (Docker, or podman: MLOPS_CONTAINER_TOOL=podman; see README, "Images")
images:
	./docker/build_images.sh

## images-test: build the images with podman and start each one (train, serve, predict; about 6 minutes once built)
images-test: $(STAMP)
	./docker/dev/images_test.sh

lint: $(STAMP)
	$(PY) -m ruff check app models script tests benchmarks

clean:
	rm -rf $(VENV) .mlops .pytest_cache
