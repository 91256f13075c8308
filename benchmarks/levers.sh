#!/usr/bin/env bash
# The README's robustness-lever table (issue 14): for each corpus seed, a `sites` corpus (12 sites, 40 files per
# class, 10 s) built with the `short` and the `long` preset, then one binary training per lever on the default
# split (20 epochs), and a markdown row per run: the CNN's validation and test-site file F1, its test AUC, the
# baseline's test-site F1 and the training time. Two trainings run at a time (JOBS), each on one thread.
#   bash benchmarks/levers.sh 0 1 2                  # OUT=/tmp/leakhunter-levers by default
#   LEVERS="none gain" EPOCHS=60 bash benchmarks/levers.sh 3
#   CV=5 LEVERS="none small" bash benchmarks/levers.sh 0 1 2   # grouped 5-fold CV over train+val sites: the
#                                                              # pooled held-out-site F1 (training/cv.py) instead
set -euo pipefail
LEAK=${LEAK:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/leak}
OUT=${OUT:-/tmp/leakhunter-levers}
EPOCHS=${EPOCHS:-20}
JOBS=${JOBS:-2}
CV=${CV:-}
LEVERS=${LEVERS:-"none gain tilt mix mask all small small+all long"}
SMALL=${SMALL:-"--channels 8,16,32 --hidden 64"}  # the smaller network

lever_flags() {  # the dataset and training flags of one lever: none, long, small, an augment list, small+LIST
  local augment=${1#small+}
  [ "$augment" = all ] && augment=gain,tilt,mix,mask
  case "$1" in
    none) echo "data.h5" ;;
    long) echo "data_long.h5" ;;
    small) echo "data.h5 $SMALL" ;;
    small+*) echo "data.h5 $SMALL --augment $augment" ;;
    *) echo "data.h5 --augment $augment" ;;  # gain, tilt, mix, mask, all or a comma list of them
  esac
}

train_one() {  # LEVER SEED: one training, its log, one markdown row on stdout
  local lever=$1 seed=$2 flags data run started seconds
  flags=$(lever_flags "$lever")
  data=${flags%% *}
  flags=${flags#"$data"}
  [ "${lever#small+}" = all ] && lever=${lever%all}gain+tilt+mix+mask
  run="$OUT/seed$seed/runs/${lever//[+,]/_}${CV:+-cv$CV}"
  rm -rf "$run"
  started=$(date +%s)
  # shellcheck disable=SC2086  # flags is a word list
  OMP_NUM_THREADS=1 nice -n 10 "$LEAK" train --mode binary --data "$OUT/seed$seed/$data" --out "$run" \
    --epochs "$EPOCHS" ${CV:+--cv $CV} $flags > "$run.log" 2>&1 || true  # H015 may warn
  seconds=$(( $(date +%s) - started ))
  if [ -n "$CV" ]; then  # the estimate line of training/cv.py, and the final model's test-site line
    local estimate test
    estimate=$(grep -E "^cross-validation \(" "$run.log" | tail -1)
    test=$(grep -E "^best epoch" "$run.log" | tail -1)
    echo "| $lever | $seed | $(sed -E 's/.*held-out file F1 ([0-9.]+).*/\1/' <<< "$estimate") |" \
      "$(sed -E 's/.*\(folds ([^)]*)\).*/\1/' <<< "$estimate") | $(sed -E 's/.*AUC ([0-9.na\/]+),.*/\1/' <<< "$estimate") |" \
      "$(sed -E 's/.*; baseline ([0-9.]+);.*/\1/' <<< "$estimate") | $(sed -E 's/.*chosen: ([0-9]+) epochs.*/\1/' <<< "$estimate") |" \
      "$(sed -E 's/.*test file F1 ([0-9.]+).*/\1/' <<< "$test") | $seconds s |"
  else
    local best baseline
    best=$(grep -E "^best epoch" "$run.log" | tail -1)
    baseline=$(grep -E "^baseline \(" "$run.log" | tail -1)
    echo "| $lever | $seed | $(sed -E 's/.*val file F1 ([0-9.]+).*/\1/' <<< "$best") |" \
      "$(sed -E 's/.*test file F1 ([0-9.]+).*/\1/' <<< "$best") | $(sed -E 's/.*AUC ([0-9.na\/]+) on.*/\1/' <<< "$best") |" \
      "$(sed -E 's/.*test file F1 ([0-9.]+).*/\1/' <<< "$baseline") | $seconds s |"
  fi
}
export -f train_one lever_flags
export LEAK OUT EPOCHS CV SMALL

for seed in "${@:-0}"; do  # corpora first, built once and reused
  corpus="$OUT/seed$seed"
  mkdir -p "$corpus/runs"
  [ -f "$corpus/corpus/manifest.csv" ] || "$LEAK" data synth "$corpus/corpus" --scenario sites --sites 12 \
    --files-per-class 40 --duration 10 --seed "$seed" > /dev/null
  [ -f "$corpus/data.h5" ] || "$LEAK" data build "$corpus/corpus" -o "$corpus/data.h5" --workers 2 > /dev/null
  if [[ " $LEVERS " == *" long "* ]] && [ ! -f "$corpus/data_long.h5" ]; then
    "$LEAK" data build "$corpus/corpus" -o "$corpus/data_long.h5" --workers 2 --preset long > /dev/null
  fi
done
if [ -n "$CV" ]; then
  echo "| lever | seed | CNN held-out-site F1 (pooled) | per fold | CNN held-out AUC | baseline held-out F1 |" \
    "epochs | final model test-site F1 | training |"
  echo "|---|---|---|---|---|---|---|---|---|"
else
  echo "| lever | seed | CNN val F1 | CNN test-site F1 | CNN test AUC | baseline test-site F1 | training |"
  echo "|---|---|---|---|---|---|---|"
fi
for seed in "${@:-0}"; do for lever in $LEVERS; do echo "$lever $seed"; done; done \
  | xargs -P "$JOBS" -L 1 bash -c 'train_one "$0" "$1"'
