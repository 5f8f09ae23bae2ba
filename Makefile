# The two commands of the README: `make test` and (once the quick start lands) `make quickstart`.
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test test-fast clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -r requirements.txt
	$(VPY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

# All tests on the CPU (reads the golden data in ../shared/reference).
test: $(STAMP)
	$(VPY) -m pytest -q

# Everything but the tests marked slow.
test-fast: $(STAMP)
	$(VPY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache
