# The two front-door commands: `make demo` (the main job) and `make test`.
# Both create .venv on first use; torch==2.13.0 goes in first so that pip
# takes the CPU build and never pulls a CUDA one.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.invc-installed

.PHONY: demo test clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[cpu,hf,plot,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/invc demo

test: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf $(VENV) build *.egg-info
