#!/usr/bin/env bash
# Everything `nmt` does on a CUDA GPU, in one go, inside about 8.5 minutes:
#   1 install   the carried wheels (.whl/, from /work/shared/tools/device-wheels.sh) and nmt
#   2 tests     pytest -m gpu tests/gpu (mixed precision, fused AdamW, GPU vs CPU decoding,
#               GPU checkpoint on a CPU-only process, resume after kill -9, bf16 decoding)
#   3 mfu       Transformer-base training MFU, bf16 (bench/gpu_check.py mfu)
#   4 multi30k  the de->en Transformer recipe (configs/multi30k) trained in bf16 for what is
#               left of 5 minutes, then test_2016_flickr scored (BLEU, updates, tokens/s, memory)
#   5 decode    beam 4, 32 sentences a batch: nmt fp32 and bf16 vs CTranslate2 float16 on the
#               same weights (`nmt export` of the model of stage 4)
# Each stage runs under its own `timeout`; a failing stage is recorded and the rest still run.
# OUTDIR gets gpu-check.json (every stage and figure), gpu-check.log and the stages' own JSON.
#
# Usage: scripts/gpu-check.sh OUTDIR        (make gpu-check [OUT=bench/results/gpu])
# Without a CUDA GPU it says so in one line and exits 0.
# Environment: MULTI30K=DIR (default ../shared/data/multi30k), GPU_CHECK_SECONDS (default 510,
# all stages together), GPU_CHECK_TRAIN_SECONDS (default 300), GPU_CHECK_WORK (scratch folder,
# default a new one under /tmp). GPU_CHECK_FORCE_CPU=1 runs every stage on the CPU with tiny
# budgets (20 s of training, a tiny MFU model, 100 validation and test sentences, 4 decoded
# by both toolkits): a dry run of the whole script.
set -uo pipefail
OUT=${1:?usage: scripts/gpu-check.sh OUTDIR}
cd "$(dirname "$0")/.."
ROOT=$PWD
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=$ROOT/.venv/bin/python; else PY=python3; fi
fi
FORCE_CPU=${GPU_CHECK_FORCE_CPU:-0}
if [ "$FORCE_CPU" != 1 ] &&
  ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu-check: no CUDA GPU visible to $PY (torch.cuda.is_available() is not true); nothing to do"
  exit 0
fi

mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
WORK=${GPU_CHECK_WORK:-$(mktemp -d /tmp/nmt-gpu-check.XXXXXX)}
mkdir -p "$WORK"
LOG=$OUT/gpu-check.log
: >"$LOG"
CORPUS=$(cd "${MULTI30K:-../shared/data/multi30k}" 2>/dev/null && pwd || echo "${MULTI30K:-../shared/data/multi30k}")
SITE=/tmp/nmt-gpu-check-site  # the carried wheels go here, not into the image's environment
export PY ROOT OUT WORK LOG CORPUS SITE FORCE_CPU
export PYTHONPATH=$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
if [ "$FORCE_CPU" = 1 ]; then
  export DEVICE=cpu TRAIN_SECONDS=${GPU_CHECK_TRAIN_SECONDS:-20} TEST_LINES=100 CT2_TYPE=int8
  # An untrained model decodes every sentence to full length: slow on a CPU.
  export VALID_LINES=100 DECODE_LINES=4
else
  export DEVICE=cuda TRAIN_SECONDS=${GPU_CHECK_TRAIN_SECONDS:-300} TEST_LINES=0 CT2_TYPE=float16
  export VALID_LINES=0 DECODE_LINES=0  # every sentence
fi
TOTAL=${GPU_CHECK_SECONDS:-510}
DEADLINE=$((SECONDS + TOTAL))
export DEADLINE_EPOCH=$(($(date +%s) + TOTAL))
STAGES=$WORK/stages.tsv
: >"$STAGES"

say() { echo "gpu-check: $*" | tee -a "$LOG"; }
note() { echo "gpu-check: $*"; }  # inside a stage, whose output goes to the log already
nmt() { "$PY" -m nmt.cli "$@"; }
export -f note nmt

# ---- the stages (each runs in its own bash under `timeout`) -------------------------------------

stage_install() {
  if [ "$FORCE_CPU" = 1 ]; then
    note "CPU dry run: wheels and pip install -e . skipped, the environment of $PY is used as it is"
  else
    if compgen -G ".whl/*.whl" >/dev/null; then
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" .whl/*.whl || return 1
    else
      note "no .whl/ folder: nothing carried to install"
    fi
    # Only for the `nmt` command; every stage runs `python -m nmt.cli` from PYTHONPATH.
    "$PY" -m pip install -q --no-deps --no-index --no-build-isolation -e . ||
      note "pip install -e . failed (the stages do not need it)"
  fi
  "$PY" - <<'PY'
import importlib, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported(False))
for name in ("datasets", "pyarrow", "sentencepiece", "sacrebleu", "typer", "ctranslate2", "nmt"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"), module.__file__)
    except Exception as exc:  # report every missing package, then fail
        print(name, "MISSING:", exc)
        raise SystemExit(1)
PY
}

stage_prepare() {  # started in the background while the tests run (CPU work only)
  nmt prepare --src-lang de --tgt-lang en --train "$CORPUS/train" --valid "$CORPUS/val" \
    --test "test_2016_flickr=$CORPUS/test_2016_flickr" --config configs/multi30k/prepare.yaml \
    --out "$WORK/data"
}

stage_tests() {
  if [ "$FORCE_CPU" = 1 ]; then  # the CPU variants run, the CUDA ones skip
    "$PY" -m pytest tests/gpu -rs -p no:cacheprovider --junitxml="$OUT/pytest-gpu.xml"
  else
    "$PY" -m pytest -m gpu tests/gpu -rs -p no:cacheprovider --junitxml="$OUT/pytest-gpu.xml"
  fi
}

stage_mfu() {
  local tiny=()
  [ "$FORCE_CPU" = 1 ] && tiny=(--tiny)
  "$PY" -m bench.gpu_check mfu "$OUT/mfu.json" --device "$DEVICE" "${tiny[@]}"
}

stage_multi30k() {
  while [ ! -f "$WORK/prepare.rc" ]; do sleep 1; done
  [ "$(cat "$WORK/prepare.rc")" = 0 ] || { note "nmt prepare failed (see the log)"; return 1; }
  # Training gets what is left of its budget once the evaluation and stage 5 are provided for.
  local left=$((DEADLINE_EPOCH - $(date +%s) - 100)) seconds=$TRAIN_SECONDS
  [ "$left" -lt "$seconds" ] && seconds=$left
  [ "$seconds" -ge 15 ] || { note "no time left to train"; return 1; }
  note "training for $seconds s ($DEVICE, bf16)"
  echo "$seconds" >"$WORK/train_seconds"
  nmt train configs/multi30k/transformer.yaml --data "$WORK/data" --out "$WORK/run" \
    --set "train.max_minutes=$(awk "BEGIN { print $seconds / 60 }")" \
    --set train.precision=bf16 --set "train.device=$DEVICE" \
    --set "train.valid_max_sentences=$VALID_LINES" || return 1
  cp "$WORK/run/metrics.jsonl" "$OUT/multi30k-metrics.jsonl"
  test_set
  nmt evaluate "$WORK/run" --device "$DEVICE" --test "test_2016_flickr=$WORK/test.de,$WORK/test.en" \
    --report "$OUT/multi30k-test.json"
}

test_set() {  # WORK/test.{de,en}: the test split as plain text (TEST_LINES lines in a dry run)
  local lang
  for lang in de en; do
    if [ "$TEST_LINES" -gt 0 ]; then
      gzip -dc "$CORPUS/test_2016_flickr.$lang.gz" | head -n "$TEST_LINES" >"$WORK/test.$lang"
    else
      gzip -dc "$CORPUS/test_2016_flickr.$lang.gz" >"$WORK/test.$lang"
    fi
  done
}

stage_decode() {
  local ckpt=$WORK/run/best.pt
  [ -f "$ckpt" ] || ckpt=$WORK/run/last.pt
  [ -f "$ckpt" ] || { note "no trained model from the multi30k stage"; return 1; }
  rm -rf "$WORK/ct2"
  nmt export "$ckpt" --out "$WORK/ct2" || return 1
  "$PY" -m bench.gpu_check decode "$ckpt" "$WORK/ct2" "$WORK/test.de" "$WORK/test.en" \
    "$OUT/decode.json" --device "$DEVICE" --beam 4 --batch 32 --ct2-compute-type "$CT2_TYPE" \
    --lines "$DECODE_LINES"
}
export -f stage_install stage_prepare stage_tests stage_mfu stage_multi30k test_set stage_decode

# ---- running them --------------------------------------------------------------------------------

# run NAME CAP_SECONDS: stage_NAME under a timeout of CAP or what is left, recorded in $STAGES.
run() {
  local name=$1 cap=$2 left=$((DEADLINE - SECONDS))
  local limit=$((cap < left ? cap : left)) start=$SECONDS rc status
  if [ "$limit" -lt 5 ]; then
    printf '%s\tskipped\t\t0\t%s\n' "$name" "$limit" >>"$STAGES"
    say "== $name: skipped, no time left"
    return
  fi
  say "== $name (at most ${limit} s)"
  timeout --kill-after=10 "$limit" bash -c "stage_$name" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  case $rc in
    0) status=ok ;;
    124 | 137) status=timeout ;;
    *) status=failed ;;
  esac
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$((SECONDS - start))" "$limit" >>"$STAGES"
  say "== $name: $status after $((SECONDS - start)) s"
}

say "device $DEVICE, python $PY, out $OUT, scratch $WORK, Multi30k $CORPUS, $TOTAL s in all"
run install 90
(
  timeout 240 bash -c stage_prepare >"$WORK/prepare.log" 2>&1
  echo $? >"$WORK/prepare.rc"
) &
run tests 200
run mfu 90
run multi30k 420
cat "$WORK/prepare.log" >>"$LOG" 2>/dev/null
run decode 120
wait

# ---- the summary: gpu-check.json -------------------------------------------------------------------
"$PY" - "$OUT" "$WORK" <<'PY' 2>&1 | tee -a "$LOG"
import json, os, platform, sys, time
import xml.etree.ElementTree as ET
from pathlib import Path

out, work = Path(sys.argv[1]), Path(sys.argv[2])

def load(name):
    path = out / name
    return json.loads(path.read_text()) if path.is_file() else None

summary = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "host": platform.node(),
           "device": os.environ["DEVICE"], "dry_run_on_cpu": os.environ["FORCE_CPU"] == "1"}
try:
    import torch
    summary["torch"] = torch.__version__
    if torch.cuda.is_available():
        summary["gpu"] = torch.cuda.get_device_name(0)
        summary["cuda"] = torch.version.cuda
except ImportError:
    pass
summary["stages"] = []
for line in (work / "stages.tsv").read_text().splitlines():
    name, status, rc, seconds, limit = line.split("\t")
    summary["stages"].append({"stage": name, "status": status, "rc": rc and int(rc),
                              "seconds": int(seconds), "limit_s": int(limit)})
junit = out / "pytest-gpu.xml"
if junit.is_file():
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    cases = []
    for case in suite.iter("testcase"):
        outcome = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
        cases.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                      "seconds": float(case.get("time", 0))})
    summary["tests"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    summary["tests"]["cases"] = cases
summary["mfu"] = load("mfu.json")
metrics = out / "multi30k-metrics.jsonl"
if metrics.is_file():
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    train = next((r for r in reversed(rows) if r.get("kind") == "summary"), {})
    test = (load("multi30k-test.json") or {}).get("tests", {}).get("test_2016_flickr", {})
    seconds = work / "train_seconds"
    summary["multi30k"] = {
        "budget_s": int(seconds.read_text()) if seconds.is_file() else None,
        **{k: train.get(k) for k in ("step", "epoch", "train_seconds", "tokens_per_s",
                                     "updates_per_min", "gpu_peak_mib", "stop_reason",
                                     "best_score", "best_step")},
        **{k: test.get(k) for k in ("sentences", "bleu", "bleu_lc", "chrf", "ter",
                                    "bleu_signature", "sentences_per_second")},
    }
summary["decode"] = load("decode.json")
tmp = out / "gpu-check.json.tmp"
tmp.write_text(json.dumps(summary, indent=2) + "\n")
tmp.replace(out / "gpu-check.json")
print(json.dumps({k: v for k, v in summary.items() if k != "tests"}, indent=1))
if "tests" in summary:
    print("tests:", {k: v for k, v in summary["tests"].items() if k != "cases"})
PY
say "done in $SECONDS s; results in $OUT/gpu-check.json"
