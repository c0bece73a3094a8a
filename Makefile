# The workbook's entry points. Every target first makes .venv (once; a stamp file records it).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help demo test lab bench clean-venv

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name biovfm --display-name "BioVFM (.venv)"
	touch $(STAMP)

demo: $(STAMP) ## run the workbook at smoke scale on synthetic data (CPU, minutes)
	$(BIN)/biovfm data synth --root outputs/data/synthetic --size 28 --scale 0.02
	$(BIN)/biovfm run 02_pretrain -f params/pretrain/smoke.yaml
	$(BIN)/biovfm run 03_probe -f params/probe/smoke.yaml
	$(BIN)/biovfm run 03_probe -f params/probe/smoke_pretrained.yaml
	$(BIN)/biovfm run 04_scaling -f params/scaling/smoke.yaml
	$(BIN)/biovfm run 05_task_properties -f params/properties/smoke.yaml
	@echo "reports: outputs/runs/*/*/*.html"

test: $(STAMP) ## run the test suite
	$(BIN)/python -m pytest

lab: $(STAMP) ## open JupyterLab on notebooks/ with the project kernel
	$(BIN)/jupyter lab notebooks/

bench: $(STAMP) ## feature-extraction throughput (ViT-B at 224 px; bf16 on a GPU)
	$(BIN)/biovfm bench probe --encoder base --size 224

clean-venv: ## remove the virtual environment (the next target rebuilds it)
	rm -rf $(VENV)
