#!/usr/bin/env bash
# The CPU speed report, in one go, on a machine with nothing else running (19 minutes on a 2-core
# Intel Xeon on 2026-12-05, OpenNMT-py's first install into /tmp/peer-onmt included):
#   1 peers   bench.peers: nmt (float32), nmt-bf16, nmt-int8 and nmt-bf16-decode (the float32
#             weights in int8 and bf16), OpenNMT-py 3.5.1, CTranslate2 float32 and int8 on our
#             float32 weights;
#             MINUTES of training each, decoding best of REPEATS; training ratio to the best
#             PyTorch peer, our best decoding entry over CTranslate2's best
#   2 cache   bench.cache_ab: decoding speed of the version before beam search kept the source
#             side once per sentence against this one, alternated ROUNDS times, outputs hashed
#   3 int8    nmt evaluate of CHECKPOINT on test_2016_flickr, beam 5, float32 and int8: BLEU
#   4 serve   bench.serve: 1, 8, 32 and 128 clients against nmt translate on 400 sentences
# Every stage writes its JSON to bench/results/ (the table of each is in the log); this script
# stops at the first stage that fails.
#
# Usage: bash scripts/bench-cpu.sh            (make bench-cpu)
# Environment: CHECKPOINT (default checkpoints/m30k-de-en-2k/best.pt: the shared 2,000-update
# float32 Transformer, for stages 2-4), MINUTES (4), REPEATS (2), ROUNDS (3), MULTI30K (default
# ../shared/data/multi30k). QUICK=1 runs every stage at toy sizes (0.5-minute trainings, 100
# sentences, one round): a dry run of the whole script in about 10 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PY:-$ROOT/.venv/bin/python}
CHECKPOINT=${CHECKPOINT:-checkpoints/m30k-de-en-2k/best.pt}
MULTI30K=${MULTI30K:-$ROOT/../shared/data/multi30k}
export MULTI30K HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
MINUTES=${MINUTES:-4}
REPEATS=${REPEATS:-2}
ROUNDS=${ROUNDS:-3}
SENTENCES=0       # cache A/B: all 1,000 test sentences
REQUESTS=400      # serve: sentences per client level
if [ "${QUICK:-0}" = 1 ]; then
  MINUTES=0.5 REPEATS=1 ROUNDS=1 SENTENCES=100 REQUESTS=100
fi
[ -f "$CHECKPOINT" ] || { echo "bench-cpu: $CHECKPOINT: no such checkpoint (set CHECKPOINT)"; exit 2; }
[ -f "$MULTI30K/test_2016_flickr.de.gz" ] || { echo "bench-cpu: no Multi30k in $MULTI30K"; exit 2; }
mkdir -p bench/results
LOG=bench/results/bench-cpu-$(date +%Y%m%d-%H%M%S).log
exec > >(tee "$LOG") 2>&1
stage() { echo; echo "== $1 ($(date '+%F %T'))"; }
echo "bench-cpu on $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), $(nproc) cores;" \
  "MINUTES=$MINUTES REPEATS=$REPEATS ROUNDS=$ROUNDS CHECKPOINT=$CHECKPOINT; log $LOG"

stage "1 peers: training and decoding, nmt vs OpenNMT-py vs CTranslate2"
"$PY" -m bench.peers \
  --toolkits nmt,nmt-bf16,nmt-int8,nmt-bf16-decode,opennmt,ctranslate2,ctranslate2-int8 \
  --minutes "$MINUTES" --repeats "$REPEATS"

stage "2 cache: decoding speed before and after the source side once per sentence"
"$PY" -m bench.cache_ab --checkpoint "$CHECKPOINT" --rounds "$ROUNDS" --repeats "$REPEATS" \
  --sentences "$SENTENCES"

stage "3 int8: BLEU of int8 and float32 decoding of $CHECKPOINT (beam 5)"
TEST="$MULTI30K/test_2016_flickr"
STAMP=$(date +%Y%m%d-%H%M%S)
for precision in fp32 int8; do
  "$PY" cli.py evaluate "$CHECKPOINT" --src "$TEST.de.gz" --ref "$TEST.en.gz" --beam 5 \
    --device cpu --set "decode.precision=$precision" \
    --report "bench/results/int8-bleu-$STAMP-$precision.json"
done
"$PY" - "bench/results/int8-bleu-$STAMP" <<'EOF_PY'
import json, sys

stem = sys.argv[1]
runs = {p: json.load(open(f"{stem}-{p}.json")) for p in ("fp32", "int8")}
scores = {p: next(iter(r["tests"].values())) for p, r in runs.items()}
for p, s in scores.items():
    print(f"{p}: BLEU {s['bleu']:.2f}, chrF {s['chrf']:.2f}, {s['sentences_per_second']} sent/s"
          f" (decode.precision={runs[p]['decode']['precision']})")
gap = scores["int8"]["bleu"] - scores["fp32"]["bleu"]
print(f"int8 - float32 BLEU: {gap:+.2f} ({'within' if abs(gap) <= 0.3 else 'OUTSIDE'} 0.3)")
EOF_PY

stage "4 serve: 1, 8, 32 and 128 clients"
"$PY" -m bench.serve --run "$CHECKPOINT" --clients 1,8,32,128 --requests "$REQUESTS"

stage "done: results in bench/results/ (this log: $LOG)"
