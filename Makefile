# The two entry points named in the README. Both create .venv on first use and reuse it after.
#   make figures   install, rebuild every figure and table of config/config.yaml, write the report
#   make test      install, then run the test suite (no hub; tests marked pypi download from PyPI)
# ARGS goes to both snakemake calls: make figures ARGS="--configfile config/paper.yaml"

PYTHON ?= python3
CORES ?= all
ARGS ?=
VENV := .venv
BIN := $(VENV)/bin

.PHONY: figures test

figures: $(VENV)/.installed
	$(BIN)/snakemake --cores $(CORES) $(ARGS)
	$(BIN)/snakemake --report results/report.html $(ARGS)
	@echo
	@echo "Done. Open results/report.html: the paper's figures by section, then the claims,"
	@echo "each with what was measured and its verdict (the scorecard is results/claims/summary.md)."

test: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/pytest

# Reinstall only when the declared dependencies change.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@
