# gqtok: every target creates the virtual environment and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gqtok-installed

.PHONY: demo test lint data train train-perceptual train-coarse fit-context gpu-carry bench throughput clean

$(STAMP): pyproject.toml scripts/install_metrics.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	PY=$(PY) bash scripts/install_metrics.sh
	touch $(STAMP)

## Encode and decode the bundled sample photo with the embedded default model.
demo: $(STAMP)
	$(PY) scripts/demo.py

## Lint and run the test suite.
test: $(STAMP)
	$(PY) -m ruff check gqtok tests scripts bench
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check gqtok tests scripts bench

## Fetch and prepare the training photos into data/prepared/.
data: $(STAMP)
	bash scripts/make_data.sh

## Reproduce the embedded default model: data, training (resumable), export to weights/.
## Two stages run to their step counts (~90 + ~85 min on 2 cores, see scripts/train_default.sh);
## TRAIN_MINUTES (0 = none) bounds each invocation and re-running `make train` resumes.
TRAIN_MINUTES ?= 0
train: $(STAMP) data/prepared/manifest.json
	$(PY) -m pip install -q --no-deps stlpips-pytorch==0.0.2
	bash scripts/train_default.sh $(TRAIN_MINUTES)

## Reproduce the default model's perceptual decoder (decoder-only fine-tuning on 2 cores,
## resumable like `make train`; see scripts/train_perceptual.sh and the decoder's card).
train-perceptual: $(STAMP) data/prepared/manifest.json
	$(PY) -m pip install -q --no-deps stlpips-pytorch==0.0.2
	bash scripts/train_perceptual.sh $(TRAIN_MINUTES)
	RELINK=1 bash scripts/train_coarse.sh  # the coarse model serves the same perceptual decoder

## Reproduce the default's coarse-codebook model (its decoder fine-tuned on the codewords of
## K = 64..16384; rate control codes K < 6144 (Q <= 10) with it; ~30 min on 2 cores, resumable; see
## scripts/train_coarse.sh), and link it from weights/default.safetensors' card.
train-coarse: $(STAMP) data/prepared/manifest.json
	bash scripts/train_coarse.sh $(TRAIN_MINUTES)

## Refit the default model's context entropy model (.gq format version 2) on the training
## photos and write it into weights/default.safetensors (weights unchanged; ~3 min on 2 cores).
fit-context: $(STAMP) data/prepared/manifest.json
	$(PY) -m gqtok fit-context data/prepared/train --val data/prepared/val \
		-o weights/default.safetensors --overwrite
	RELINK=1 bash scripts/train_coarse.sh  # the coarse model takes the new entropy models

data/prepared/manifest.json:
	$(MAKE) data

## What a GPU training session carries besides data/prepared (scripts/gpu_train_session.sh):
## the ST-LPIPS AlexNet weight file in .gpu-carry/ (9.9 MB; the whole wheel passes the 64 MiB
## carry limit). gqtok finds it there as the stlpips_pytorch package's and checks its sha256.
gpu-carry: $(STAMP)
	$(PY) -m pip install -q --no-deps stlpips-pytorch==0.0.2
	$(PY) scripts/gpu_carry.py

## Benchmarks (print numbers; see README).
bench: $(STAMP)
	$(PY) bench/gq_search.py
	$(PY) bench/codec_speed.py
	$(PY) bench/codec_speed.py --entropy static

## Batch throughput on 200 mixed-size photos (about 10 minutes on 2 cores).
throughput: $(STAMP)
	$(PY) bench/throughput.py

clean:
	rm -rf build .pytest_cache .ruff_cache
