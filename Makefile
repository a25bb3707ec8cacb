# Two commands do all set-up: `make demo` and `make test` (each creates .venv if needed).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PPDATA := $(VENV)/bin/ppdata
STAMP := $(VENV)/.ppdata-installed
DEMO := demo-out

.PHONY: setup demo test test-fast bench clean

setup: $(STAMP)

# torch/torchvision are pinned here (the CUDA build that also runs on CPU); pyproject keeps ranges,
# so installing the project never pulls another torch.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[all,test]'
	touch $(STAMP)

# The main job on the embedded sample, offline: client encrypts (keys kept outside the upload),
# server expands 8x without a key and trains a (narrow, one-epoch) ResNet-18, evaluated on Enc(Q)
# and plain Q; the client audits how much of its images leaks.
demo: setup
	rm -rf $(DEMO) && mkdir -p $(DEMO)
	$(PPDATA) encrypt sample --cs --out $(DEMO)/shards --keep-keys $(DEMO)/keys.json
	$(PPDATA) encrypt sample --plain --out $(DEMO)/plain
	$(PPDATA) preview $(DEMO)/shards --plain sample -o $(DEMO)/preview.png
	$(PPDATA) augment $(DEMO)/shards --out $(DEMO)/shards-x8
	$(PPDATA) info $(DEMO)/shards-x8 --verify
	OMP_NUM_THREADS=1 $(PY) -m train.resnet $(DEMO)/shards-x8 --profile smoke --width 16 \
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

clean:
	rm -rf $(DEMO) .pytest_cache build *.egg-info
