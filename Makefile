# The two entry points named in the README. Both create .venv on first use and reuse it after.
#   make figures   install, then rebuild every figure and table of config/config.yaml
#   make test      install, then run the offline test suite

PYTHON ?= python3
CORES ?= 2
VENV := .venv
BIN := $(VENV)/bin

.PHONY: figures test

figures: $(VENV)/.installed
	$(BIN)/snakemake --cores $(CORES)

test: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/pytest

# Reinstall only when the declared dependencies change.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@
