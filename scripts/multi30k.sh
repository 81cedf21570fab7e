#!/usr/bin/env bash
# Multi30k recipe: prepare -> train -> average -> learning curve -> choose beam/length penalty on
# val -> test once.
# Usage: scripts/multi30k.sh SRC TGT MODEL [extra --set overrides for nmt train]
#   scripts/multi30k.sh de en transformer --set train.max_minutes=30
#   scripts/multi30k.sh en de rnn-bahdanau
# Hyperparameters (including the decoding ones) are chosen on val; test_2016_flickr is scored
# once, at the end, with the chosen settings.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${1:?source language (de|en|fr)}; TGT=${2:?target language}; MODEL=${3:?transformer|rnn-bahdanau}
shift 3
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
NMT="${NMT:-.venv/bin/nmt}"
PY="${PY:-.venv/bin/python}"
CORPUS="${MULTI30K:-../shared/data/multi30k}"
DATA=data/multi30k-$SRC-$TGT
RUN=${RUN:-checkpoints/multi30k-$MODEL-$SRC-$TGT}
TUNE=$RUN/decode-tuning

"$NMT" prepare --src-lang "$SRC" --tgt-lang "$TGT" --train "$CORPUS/train" --valid "$CORPUS/val" \
  --test "test_2016_flickr=$CORPUS/test_2016_flickr" --config configs/multi30k/prepare.yaml \
  --out "$DATA"
if [ -f "$RUN/last.pt" ]; then "$NMT" train --resume "$RUN" "$@"
else "$NMT" train "configs/multi30k/$MODEL.yaml" --data "$DATA" --out "$RUN" "$@"; fi
"$NMT" average "$RUN" --last 5 --out "$RUN/averaged.pt" || cp "$RUN/best.pt" "$RUN/averaged.pt"
"$NMT" plot-metrics "$RUN" --out "$RUN/curve.png"   # where the validation score stops rising

# Checkpoint (averaged or best) and decoding settings chosen on val: greedy, and beam 5 with GNMT
# length penalties from 0.6 to 2.0 (the Multi30k Transformers choose 1.5 and 2.0 on val).
mkdir -p "$TUNE"
VAL="val=$CORPUS/val.$SRC.gz,$CORPUS/val.$TGT.gz"
for ckpt in averaged best; do
  "$NMT" evaluate "$RUN/$ckpt.pt" --test "$VAL" --beam 1 --report "$TUNE/$ckpt-beam1.json"
  for lp in 0.6 1.0 1.5 2.0; do
    "$NMT" evaluate "$RUN/$ckpt.pt" --test "$VAL" --beam 5 --set "decode.len_penalty=$lp" \
      --report "$TUNE/$ckpt-beam5-lp$lp.json"
  done
done
read -r CKPT BEAM LP < <("$PY" - "$TUNE" <<'PY'
import json, pathlib, sys
reports = [json.loads(p.read_text()) for p in sorted(pathlib.Path(sys.argv[1]).glob("*.json"))]
best = max(reports, key=lambda r: r["tests"]["val"]["bleu"])
print(best["models"][0], best["decode"]["beam_size"], best["decode"]["len_penalty"])
PY
)
echo "chosen on val: $CKPT, beam $BEAM, len_penalty $LP"

"$NMT" evaluate "$CKPT" --beam "$BEAM" --set "decode.len_penalty=$LP" \
  --test "test_2016_flickr=$CORPUS/test_2016_flickr.$SRC.gz,$CORPUS/test_2016_flickr.$TGT.gz" \
  --report "$RUN/test_scores.json" --hyp-out "$RUN/test_2016_flickr.hyp.$TGT"
