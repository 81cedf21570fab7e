#!/usr/bin/env bash
# WMT14 English->German, Transformer-base: prepare -> train (torchrun, every local GPU) -> average
# the last 5 checkpoints -> newstest2014 scored once. configs/wmt14/ holds the settings; README
# "WMT14 en-de recipe" says what it costs (an estimate) and how to run it on several machines.
# Usage: scripts/wmt14.sh [SRC TGT] [extra --set overrides for nmt train]
#   scripts/wmt14.sh                                  # en->de, data from the HF hub (hf:wmt14)
#   WMT14=/data/wmt14 scripts/wmt14.sh en de          # local files (layout below)
#   GPUS=1 scripts/wmt14.sh en de --set train.batch_tokens=12800 --set train.update_freq=4
# Local files: DIR/train.{en,de} (gzip allowed), DIR/newstest2013.{en,de}, DIR/newstest2014.{en,de}.
# PREPARE_ARGS adds flags to nmt prepare (e.g. "--set dedup=true"); DATA and RUN move the folders.
# The hub route (dataset wmt/wmt14, config de-en) downloads it once into the HF cache (about
# 1.4 GB) and writes the validation and test sets to data/wmt14-raw/ as plain text for evaluate.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${1:-en}; TGT=${2:-de}
shift $(( $# >= 2 ? 2 : $# ))
export PYTHONUNBUFFERED=1
NMT="${NMT:-.venv/bin/nmt}"
PY="${PY:-.venv/bin/python}"
WMT14=${WMT14:-hf}
GPUS=${GPUS:-$("$PY" -c 'import torch; print(max(1, torch.cuda.device_count()))')}
DATA=${DATA:-data/wmt14-$SRC-$TGT}
RUN=${RUN:-checkpoints/wmt14-transformer-base-$SRC-$TGT}

if [ "$WMT14" = hf ]; then
  RAW=data/wmt14-raw
  if [ ! -f "$RAW/newstest2014.$TGT" ]; then
    # Validation (newstest2013) and test (newstest2014) as plain text files, for evaluate.
    HF_DATASETS_OFFLINE=0 HF_HUB_OFFLINE=0 "$PY" - "$RAW" <<'PY'
import pathlib, sys
import datasets
out = pathlib.Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
for split, name in (("validation", "newstest2013"), ("test", "newstest2014")):
    rows = datasets.load_dataset("wmt/wmt14", "de-en", split=split)["translation"]
    for lang in ("de", "en"):
        (out / f"{name}.{lang}").write_text("".join(r[lang] + "\n" for r in rows), "utf-8")
PY
  fi
  TRAIN=hf:wmt/wmt14:de-en@train
  export HF_DATASETS_OFFLINE=0 HF_HUB_OFFLINE=0
else
  RAW=$WMT14
  TRAIN=$WMT14/train
fi

"$NMT" prepare --src-lang "$SRC" --tgt-lang "$TGT" \
  --config configs/wmt14/prepare.yaml --train "$TRAIN" --valid "$RAW/newstest2013" \
  --test "newstest2014=$RAW/newstest2014" --out "$DATA" ${PREPARE_ARGS:-}
if [ -f "$RUN/last.pt" ]; then ARGS=(--resume "$RUN")
else ARGS=(configs/wmt14/transformer-base.yaml --data "$DATA" --out "$RUN"); fi
"$PY" -m torch.distributed.run --standalone --nproc-per-node "$GPUS" -m nmt.cli train "${ARGS[@]}" "$@"
"$NMT" average "$RUN" --last 5 --out "$RUN/averaged.pt" || cp "$RUN/best.pt" "$RUN/averaged.pt"
"$NMT" evaluate "$RUN/averaged.pt" --test "newstest2014=$RAW/newstest2014.$SRC,$RAW/newstest2014.$TGT" \
  --report "$RUN/test_scores.json" --hyp-out "$RUN/newstest2014.hyp.$TGT"
