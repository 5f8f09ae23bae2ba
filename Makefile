# The two commands of the README: `make quickstart` and `make test`.
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv quickstart test test-fast clean

# --no-compile: pip would byte-compile every installed file, half of the installation's time;
# tools/precompile.py compiles only what the project imports.
$(STAMP): requirements.txt pyproject.toml
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet --no-compile -r requirements.txt
	$(VPY) -m pip install --quiet --no-deps -e .
	$(VPY) tools/precompile.py
	touch $(STAMP)

venv: $(STAMP)

# The CPU quick start: synthetic data, training, inference, J&F, curves and an overlay GIF (tools/quickstart.py).
quickstart: $(STAMP)
	$(VPY) tools/quickstart.py

# All tests on the CPU (the golden reference data is in tests/golden/).
test: $(STAMP)
	$(VPY) -m pytest -q

# Everything but the tests marked slow.
test-fast: $(STAMP)
	$(VPY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache
