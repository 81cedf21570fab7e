#!/usr/bin/env bash
# The attention study: every kind of attention nmt has, trained on Multi30k de->en under the same
# wall-clock budget, then scored for translation (BLEU, chrF on test_2016_flickr) and for
# alignment (AER of its attention against eflomal's links of the test set, attention entropy).
# Usage: scripts/attention-study.sh [train|evaluate|all]     (default: all; from the repo root)
#   MINUTES=12 (budget per row), MULTI30K=DIR (default ../shared/data/multi30k)
# A finished row (its metrics.jsonl ends the training with a summary) is not trained again; an
# interrupted one is resumed within its budget. Results go to docs/attention-study/.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
NMT="${NMT:-.venv/bin/nmt}"
PY="${PY:-.venv/bin/python}"
CORPUS="${MULTI30K:-../shared/data/multi30k}"
MINUTES="${MINUTES:-12}"
DATA=data/multi30k-de-en-align
RUNS=checkpoints/attention-study
STAGE="${1:-all}"

# name | config | overrides. The RNN rows differ only in model.rnn.attention; the Transformer
# rows only in train.guided_alignment (lambda 0.05, Garg et al. 2019's value).
ROWS=(
  "bahdanau|rnn-bahdanau|model.rnn.attention=bahdanau"
  "luong-dot|rnn-bahdanau|model.rnn.attention=luong-dot"
  "luong-general|rnn-bahdanau|model.rnn.attention=luong-general"
  "local-p|rnn-bahdanau|model.rnn.attention=local"
  "local-m|rnn-bahdanau|model.rnn.attention=local-m"
  "hard|rnn-bahdanau|model.rnn.attention=hard"
  "transformer|transformer|train.guided_alignment=0"
  "transformer-guided|transformer|train.guided_alignment=0.05"
)
# Shared by every row: the short-budget schedule of the README's recipe rows (the recipe defaults
# are meant for long runs), validation every 300 updates with greedy search. bf16 only where it
# helps on this CPU: it speeds the Transformer up, but makes the RNN's step-by-step decoder ~2.5x
# slower (38 vs 96 updates/min over 40 updates of the Bahdanau row).
COMMON=(train.max_minutes="$MINUTES" train.lr=1e-3 train.valid_every=300 train.save_every=300
  train.patience=0)
RNN=(train.precision=fp32)
TRANSFORMER=(train.precision=bf16 train.warmup_steps=300 model.transformer.dropout=0.1)

prepare() {
  "$NMT" prepare --src-lang de --tgt-lang en --train "$CORPUS/train" --valid "$CORPUS/val" \
    --test "test_2016_flickr=$CORPUS/test_2016_flickr" --config configs/multi30k/prepare.yaml \
    --set alignments=eflomal --out "$DATA"
}

train_rows() {
  for row in "${ROWS[@]}"; do
    IFS='|' read -r name config override <<<"$row"
    local run=$RUNS/$name sets=() extra=()
    # Finished: the last summary ends the training for a reason other than a signal.
    if grep '"kind": "summary"' "$run/metrics.jsonl" 2>/dev/null | tail -n 1 \
        | grep -q -v '"stop_reason": "stopped by'; then
      echo "== $name: trained already ($run)"; continue
    elif [ -f "$run/last.pt" ]; then
      echo "== $name: resuming $run"; "$NMT" train --resume "$run"; continue
    fi
    for s in "${COMMON[@]}" "$override"; do sets+=(--set "$s"); done
    if [ "$config" = transformer ]; then extra=("${TRANSFORMER[@]}"); else extra=("${RNN[@]}"); fi
    for s in "${extra[@]}"; do sets+=(--set "$s"); done
    echo "== $name: nmt train configs/multi30k/$config.yaml ${sets[*]}"
    "$NMT" train "configs/multi30k/$config.yaml" --data "$DATA" --out "$run" "${sets[@]}"
  done
}

evaluate_rows() {
  local names=()
  for row in "${ROWS[@]}"; do names+=("${row%%|*}"); done
  "$PY" scripts/attention_study.py --runs "$RUNS" --corpus "$CORPUS" --data "$DATA" \
    --out docs/attention-study "${names[@]}"
  "$NMT" plot-metrics "${names[@]/#/$RUNS/}" --out docs/attention-study/curves.png
}

case "$STAGE" in
  train) prepare; train_rows ;;
  evaluate) evaluate_rows ;;
  all) prepare; train_rows; evaluate_rows ;;
  *) echo "usage: $0 [train|evaluate|all]" >&2; exit 2 ;;
esac
