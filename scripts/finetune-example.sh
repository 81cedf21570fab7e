#!/usr/bin/env bash
# Domain adaptation, measured: a Japanese->English model trained on the Old Testament ("general"),
# fine-tuned on the New Testament (the new domain) with `nmt train --init`, and both scored on the
# held-out books of each part. Every stage is reused when its output already exists: an existing
# run is resumed up to the requested updates (remove checkpoints/bible-ot-nt to fine-tune again
# from a longer general run).
# Usage: scripts/finetune-example.sh   (from the repository root, after `make setup`)
# GENERAL_STEPS / FINETUNE_STEPS set the updates (counted, not timed, so results do not depend on
# the machine's speed); NMT picks the nmt command (default .venv/bin/nmt).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
NMT="${NMT:-.venv/bin/nmt}"
GENERAL_STEPS="${GENERAL_STEPS:-900}"
FINETUNE_STEPS="${FINETUNE_STEPS:-250}"
RAW=data/bible/raw
SPLIT=data/bible-ot-nt/raw
GENERAL=checkpoints/bible-ot
ADAPTED=checkpoints/bible-ot-nt
start=$(date +%s)
step() { printf '\n== %s (%ds)\n' "$1" $(( $(date +%s) - start )); }

step "1/6 corpus: the Bible pairs, split by testament (books 1-39 OT, 40-66 NT)"
[ -f "$RAW/test.en" ] || "$NMT" corpus bible --out "$RAW"
mkdir -p "$SPLIT"
for split in train valid test; do
  for lang in ja en; do
    # The .ref file gives each line's book (canonical position); whole books stay together.
    awk -v ot="$SPLIT/ot-$split.$lang" -v nt="$SPLIT/nt-$split.$lang" \
      'NR == FNR { is_nt[FNR] = ($1 >= 40); next } { print > (is_nt[FNR] ? nt : ot) }' \
      "$RAW/$split.ref" "$RAW/$split.$lang"
  done
done
wc -l "$SPLIT"/*.en

step "2/6 prepare the Old Testament (its own SentencePiece model)"
"$NMT" prepare --src-lang ja --tgt-lang en --train "$SPLIT/ot-train" --valid "$SPLIT/ot-valid" \
  --config configs/bible/prepare.yaml --out data/bible-ot-nt/ot

step "3/6 train the general model on the Old Testament: $GENERAL_STEPS updates"
if [ -f "$GENERAL/config.yaml" ]; then
  "$NMT" train --resume "$GENERAL" --set "train.max_steps=$GENERAL_STEPS"
else
  # The demo's Transformer at half the width: more updates for the same CPU time.
  "$NMT" train configs/bible/transformer.yaml --data data/bible-ot-nt/ot --out "$GENERAL" \
    --set model.transformer.d_model=128 --set model.transformer.ffn_dim=512 \
    --set "train.max_steps=$GENERAL_STEPS" --set train.valid_every=100 --set train.save_every=50
fi

step "4/6 prepare the New Testament with the general model's SentencePiece model"
"$NMT" prepare --src-lang ja --tgt-lang en --train "$SPLIT/nt-train" --valid "$SPLIT/nt-valid" \
  --config configs/bible/prepare.yaml --set "spm_model=$GENERAL/spm.model" \
  --out data/bible-ot-nt/nt

step "5/6 fine-tune on the New Testament: $FINETUNE_STEPS updates, fresh optimizer and schedule"
if [ -f "$ADAPTED/config.yaml" ]; then
  "$NMT" train --resume "$ADAPTED" --set "train.max_steps=$FINETUNE_STEPS"
else
  # No CONFIG: everything comes from the general run's config, changed by --set.
  "$NMT" train --init "$GENERAL" --data data/bible-ot-nt/nt --out "$ADAPTED" \
    --set "train.max_steps=$FINETUNE_STEPS" --set train.lr=5e-4 --set train.warmup_steps=30 \
    --set train.valid_every=40 --set train.save_every=40
fi

step "6/6 evaluate both models on both held-out sets (beam 5, sacreBLEU)"
for run in "$GENERAL" "$ADAPTED"; do
  "$NMT" evaluate "$run" --test "ot=$SPLIT/ot-test.ja,$SPLIT/ot-test.en" \
    --test "nt=$SPLIT/nt-test.ja,$SPLIT/nt-test.en" --report "$run/ot-nt-scores.json"
done
.venv/bin/python - "$GENERAL/ot-nt-scores.json" "$ADAPTED/ot-nt-scores.json" <<'PY'
import json, sys
before, after = (json.load(open(path))["tests"] for path in sys.argv[1:])
for name, label in (("nt", "new domain (NT held-out books)"), ("ot", "original (OT held-out books)")):
    b, a = before[name], after[name]
    print(f"{label}, {b['sentences']:,} verses: BLEU {b['bleu']:.2f} -> {a['bleu']:.2f}, "
          f"chrF {b['chrf']:.2f} -> {a['chrf']:.2f}")
print(f"sacreBLEU {before['nt']['bleu_signature']}")
PY
echo "total time: $(( $(date +%s) - start )) s"
