# Two commands do all set-up: `make demo` and `make test` (each creates .venv if needed).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PPDATA := $(VENV)/bin/ppdata
STAMP := $(VENV)/.ppdata-installed
DEMO := demo-out

.PHONY: setup demo test test-fast bench gpu-check clean

setup: $(STAMP)

# torch/torchvision are pinned here (the CUDA build that also runs on CPU); pyproject keeps ranges,
# so installing the project never pulls another torch.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -c constraints.txt -e '.[all,test]'
	touch $(STAMP)

# The main job on the embedded sample, offline: client encrypts (keys kept outside the upload),
# server adds the paper's x8 expansion (trainx8) without a key and trains a (narrow, one-epoch)
# ResNet-18 on it, evaluated on Enc(Q) and plain Q; the client audits how much of its images leaks.
demo: setup
	rm -rf $(DEMO) && mkdir -p $(DEMO)
	$(PPDATA) encrypt sample --cs --out $(DEMO)/shards --keep-keys $(DEMO)/keys.json
	$(PPDATA) encrypt sample --plain --out $(DEMO)/plain
	$(PPDATA) preview $(DEMO)/shards --plain sample -o $(DEMO)/preview.png
	$(PPDATA) augment $(DEMO)/shards
	$(PPDATA) info $(DEMO)/shards --verify
	OMP_NUM_THREADS=1 $(PY) -m train.resnet $(DEMO)/shards --profile smoke --no-augment --width 16 \
		--eval plain=$(DEMO)/plain --out $(DEMO)/run
	$(PPDATA) audit $(DEMO)/shards --plain sample --out $(DEMO)/audit
	@echo "demo done: see $(DEMO)/ (preview.png, run/metrics.json, audit/report.md)"

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) bench/encrypt.py
	$(PY) bench/schemes.py
	$(PY) bench/augment.py
	$(PY) bench/scale.py

# The GPU check (docs/train.md): on a fresh machine with one GPU, in at most 8 minutes, CIFAR-10 shards
# (plain, NP+CS), the fast recipe on both, a 1-process torchrun DDP smoke and the streaming feed ratio;
# writes bench/results/gpu-<date>.md and .json. DATA: a folder holding CIFAR-10's JPEG archives
# train.tar.gz and test.tar.gz. TINY=1: the same steps on CPU with tiny data (about a minute).
# On a fresh machine run `make setup` first, as its own command: the 8 minutes are the check's.
# ARGS: more options of scripts/gpu_check.py (--budget, --epochs, --workers, --no-compile).
DATA ?=
ARGS ?=
gpu-check:
	@test -n "$(DATA)" || { echo "usage: make gpu-check DATA=folder-with-cifar10-train.tar.gz-and-test.tar.gz [TINY=1]"; exit 2; }
	$(MAKE) setup
	$(PY) scripts/gpu_check.py --data "$(DATA)" $(if $(TINY),--tiny) $(ARGS)

clean:
	rm -rf $(DEMO) .pytest_cache build *.egg-info
