# The workbook's entry points. Every target first makes .venv (once; a stamp file records it).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help demo resolution test lab bench gpu-check chromium clean-venv

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name biovfm --display-name "BioVFM (.venv)"
	touch $(STAMP)

demo: $(STAMP) ## the workbook at smoke scale (CPU, minutes): corpus, smoke grid, report index
	$(BIN)/biovfm data synth --root outputs/data/synthetic --size 28 --scale 0.02
	$(BIN)/biovfm run 01_curation -f params/curation/demo.yaml
	$(BIN)/biovfm grid params/grids/smoke.yaml --jobs 2
	$(BIN)/biovfm report

resolution: $(STAMP) ## one checkpoint probed at 28/64/128/224 px, MedMNIST+'s way (CPU, minutes)
	$(BIN)/biovfm run 02_pretrain -f params/pretrain/resolution_smoke.yaml
	$(BIN)/biovfm grid params/grids/resolution_smoke.yaml --jobs 2
	$(BIN)/biovfm report

test: $(STAMP) chromium ## run the test suite
	$(BIN)/python -m pytest

chromium: ## install Debian's chromium for the browser test if absent (as root; never fails)
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
	  echo "chromium: absent and not installable here (needs root and apt-get);" \
	       "tests/test_lab_browser.py will skip"; \
	else \
	  (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null \
	    || echo "chromium: apt-get install failed; tests/test_lab_browser.py will skip"; \
	fi

lab: $(STAMP) ## open JupyterLab on notebooks/ with the project kernel
	$(BIN)/jupyter lab notebooks/ $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

bench: $(STAMP) ## feature-extraction throughput (ViT-B at 224 px; bf16 on a GPU)
	$(BIN)/biovfm bench probe --encoder base --size 224

gpu-check: $(STAMP) ## the prepared GPU check on one H100/H200 (< 8 min): outputs/bench/gpu-*/
	$(BIN)/biovfm bench gpu

clean-venv: ## remove the virtual environment (the next target rebuilds it)
	rm -rf $(VENV)
