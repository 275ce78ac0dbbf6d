# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both create .venv (Python >= 3.12, pinned dependencies via uv) when it is missing or stale.
VENV      := .venv
PY        := $(VENV)/bin/python
UV_VERSION := 0.13.8
LOCK      := requirements/test.lock
STAMP     := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup test test-slow demo clean-venv hf-venv check-configs

setup: $(STAMP)

$(STAMP): $(LOCK) pyproject.toml
	@set -e; \
	if [ ! -x $(PY) ]; then \
	  py=$$(tools/find_python.sh); \
	  echo "creating $(VENV) with $$py"; \
	  "$$py" -m venv $(VENV); \
	fi; \
	$(PY) -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION); \
	$(VENV)/bin/uv pip install --quiet --python $(PY) -r $(LOCK); \
	$(VENV)/bin/uv pip install --quiet --python $(PY) --no-deps -e .; \
	touch $(STAMP); \
	echo "$(VENV) ready"

# `make test`: everything but the tests marked slow (MaxText end to end, big compiles); `make test-slow`:
# those. CI (.ci/run) runs both.
test: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m lwm_plugin.demo

# The transformers/torch reference for the converter tests (Python 3.11; tests create it on demand).
hf-venv:
	tools/hf_venv.sh

clean-venv:
	rm -rf $(VENV) .venv-hf

# AOT-compile every paper stage for its TPU pod (libtpu, no TPU needed) and print the fit table.
check-configs: $(STAMP)
	$(PY) tools/check_stages.py --out check_configs.jsonl
