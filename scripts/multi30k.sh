#!/usr/bin/env bash
# Multi30k recipe: prepare -> train -> average -> evaluate on ../shared/data/multi30k (task 1).
# Usage: scripts/multi30k.sh SRC TGT MODEL [extra --set overrides for nmt train]
#   scripts/multi30k.sh de en transformer --set train.max_minutes=30
#   scripts/multi30k.sh en de rnn-bahdanau
# Hyperparameters are chosen on val; test_2016_flickr is scored once, at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${1:?source language (de|en|fr)}; TGT=${2:?target language}; MODEL=${3:?transformer|rnn-bahdanau}
shift 3
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
NMT="${NMT:-.venv/bin/nmt}"
CORPUS="${MULTI30K:-../shared/data/multi30k}"
DATA=data/multi30k-$SRC-$TGT
RUN=checkpoints/multi30k-$MODEL-$SRC-$TGT

"$NMT" prepare --src-lang "$SRC" --tgt-lang "$TGT" --train "$CORPUS/train" --valid "$CORPUS/val" \
  --test "test_2016_flickr=$CORPUS/test_2016_flickr" --vocab-size 8000 --out "$DATA"
if [ -f "$RUN/last.pt" ]; then "$NMT" train --resume "$RUN" "$@"
else "$NMT" train "configs/multi30k/$MODEL.yaml" --data "$DATA" --out "$RUN" "$@"; fi
"$NMT" average "$RUN" --last 5 --out "$RUN/averaged.pt" || cp "$RUN/best.pt" "$RUN/averaged.pt"
"$NMT" evaluate "$RUN/averaged.pt" \
  --test "test_2016_flickr=$CORPUS/test_2016_flickr.$SRC.gz,$CORPUS/test_2016_flickr.$TGT.gz" \
  --report "$RUN/test_scores.json" --hyp-out "$RUN/test_2016_flickr.hyp.$TGT"
