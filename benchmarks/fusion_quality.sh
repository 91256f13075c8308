#!/usr/bin/env bash
# The README's fusion table (section "Fusion models"): a gain-confound corpus (160 files per class of 4 s, seed 0),
# the default build and split, fusion runs (mel, features and meta on gain_db) for each training seed given, and
# binary LeakCNNs (default size and the fusion's mel size) on the same split; then each stage's summary line and
# each model's test-split F1. About 40 s per fusion run and 2 min for the default-size binary on 2 cores.
#   bash benchmarks/fusion_quality.sh 0 1 2        # OUT=/tmp/leakhunter-fusion by default
#   SCENARIO=classes bash benchmarks/fusion_quality.sh 0   # the 5-class plumbing corpus (no meta branch)
set -euo pipefail
LEAK=${LEAK:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/leak}
OUT=${OUT:-/tmp/leakhunter-fusion}
SCENARIO=${SCENARIO:-gain-confound}
SMALL=(--channels 8,16,32 --hidden 64)
SCHEDULE=(--epochs 15 --patience 6 --batch-size 256)
if [ "$SCENARIO" = gain-confound ]; then
  source=(corpus/manifest.csv) sizes=(--files-per-class 160 --duration 4) fusion=(--branches mel,features,meta --meta gain_db)
else
  source=(corpus) sizes=(--files-per-class 20 --duration 10) fusion=(--branches mel,features)
fi
mkdir -p "$OUT" && cd "$OUT"
rm -rf corpus data.h5 runs
"$LEAK" data synth corpus --scenario "$SCENARIO" "${sizes[@]}" --seed 0 > /dev/null
"$LEAK" data build "${source[@]}" -o data.h5 | tail -1
for seed in "${@:-0}"; do
  started=$(date +%s)
  "$LEAK" train --mode fusion --data data.h5 --out "runs/fusion-seed$seed" "${fusion[@]}" "${SMALL[@]}" \
    "${SCHEDULE[@]}" --seed "$seed" > "fusion-seed$seed.log" 2>&1
  echo "fusion, training seed $seed ($(( $(date +%s) - started )) s):"
  grep -E "^stage [0-9]-[a-z]+: best|^fusion:|^health:" "fusion-seed$seed.log" | sed "s/^/  /"
done
if [ "$SCENARIO" = gain-confound ]; then  # seed 0's model exported, on the test files: meta known, and unknown
  "$LEAK" export runs/fusion-seed0/best.pth -o fusion-seed0.onnx | tail -1
  "$LEAK" data files data.h5 --split test -o test.csv > /dev/null
  "$(dirname "$LEAK")/python" - <<'PY'
import csv
rows = list(csv.DictReader(open("test.csv")))
with open("unknown.csv", "w", newline="") as handle:  # a value the model cannot use is unknown (NaN)
    csv.writer(handle).writerows([("path", "gain_db"), *((row["path"], "unknown") for row in rows)])
PY
  "$LEAK" eval runs/fusion-seed0/best.pth --data data.h5 --split test | grep -A8 "each fusion branch alone"
  "$LEAK" bench fusion-seed0.onnx corpus/LEAK | tail -12
  for meta in named unknown; do
    flags=() && [ "$meta" = unknown ] && flags=(--meta unknown.csv)
    "$LEAK" predict test.csv --model fusion-seed0.onnx --out "predict-$meta.csv" "${flags[@]}" | tail -1
    "$(dirname "$LEAK")/python" - "$meta" <<'PY'
import csv, sys
truth = {row["path"]: row["label"] == "LEAK" for row in csv.DictReader(open("test.csv"))}  # absolute paths
rows = list(csv.DictReader(open(f"predict-{sys.argv[1]}.csv")))
said = {row["file"]: row["verdict"] == "LEAK" for row in rows}
tp = sum(truth[f] and said[f] for f in said)
fp, fn = sum(said.values()) - tp, sum(truth.values()) - tp
print(f"  predict, meta {sys.argv[1]} (meta_missing on {sum(bool(r['meta_missing']) for r in rows)} of {len(rows)} "
      f"files): test file F1 {2 * tp / (2 * tp + fp + fn):.3f}")
PY
  done
  "$LEAK" predict test.csv --model runs/fusion-seed0/best.pth --out predict-pth.csv | tail -1
  "$(dirname "$LEAK")/python" - <<'PY'
import csv
onnx = {r["file"]: r for r in csv.DictReader(open("predict-named.csv"))}
pth = {r["file"]: r for r in csv.DictReader(open("predict-pth.csv"))}
same = sum(onnx[f]["verdict"] == pth[f]["verdict"] for f in onnx)
delta = max(abs(float(onnx[f]["mean_leak_prob"]) - float(pth[f]["mean_leak_prob"])) for f in onnx)
print(f"  .onnx vs .pth: {same} of {len(onnx)} verdicts equal, max |Δ mean P(LEAK)| {delta:.1e}")
PY
  if [ "${RAY:-0}" = 1 ]; then  # the same table by --engine ray on a local Ray (the [ray] extra)
    "$(dirname "$LEAK")/python" - <<'PY'
import csv, logging, ray
from leakhunter.inference.predict import predict
ray.init(num_cpus=2, object_store_memory=80 << 20, include_dashboard=False, logging_level=logging.ERROR)
predict(["test.csv"], "fusion-seed0.onnx", out="predict-ray.csv", engine="ray", meta="unknown.csv")
ray.shutdown()
local = {r["file"]: r for r in csv.DictReader(open("predict-unknown.csv"))}
rows = {r["file"]: r for r in csv.DictReader(open("predict-ray.csv"))}
same = sum(rows[f]["verdict"] == local[f]["verdict"] and rows[f]["meta_source"] == local[f]["meta_source"] for f in local)
delta = max(abs(float(rows[f]["mean_leak_prob"]) - float(local[f]["mean_leak_prob"])) for f in local)
print(f"  --engine ray with --meta: {same} of {len(local)} rows as the local engine's, max |Δ mean P(LEAK)| {delta:.1e}")
PY
  fi
fi
for size in small default; do
  args=("${SCHEDULE[@]}") && [ "$size" = small ] && args+=("${SMALL[@]}")
  "$LEAK" train --mode binary --data data.h5 --out "runs/binary-$size" "${args[@]}" > "binary-$size.log" 2>&1 || true
  echo "binary LeakCNN, $size size:" && grep -E "^best epoch" "binary-$size.log" | sed "s/^/  /"
done
