# The two commands of the README: `make demo` (install + the main job) and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
CORES  ?= all

.PHONY: install test demo lint clean-demo

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: on the dev machines pip takes the CPU build from local disk
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m pytest -q -n auto --dist loadfile

demo: install
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m fian_pipeline.demo --cores $(CORES)

lint: install
	$(VENV)/bin/ruff check fian pipeline tests bench
