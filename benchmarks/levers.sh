#!/usr/bin/env bash
# The README's robustness-lever table (issue 14). For each corpus seed: a `sites` corpus (12 sites, 40 files per
# class, 10 s) built with the `short` preset (and the `long` or `wide` one when a lever starts so), then one binary
# training per lever (20 epochs), two at a time (JOBS), each on one thread under nice. A lever is `none`, `long`,
# `wide`, `small` (SMALL: --channels 8,16,32 --hidden 64), an --augment list (gain, tilt, mix, mask, `all`, or a
# comma list) or small+LIST; any of them +relative (or `relative` alone) adds --level relative, and +site (or
# `site` alone; before +relative when both) adds --reference sensor (each log-mel judged against its site's usual
# one); long+ (wide+) before any other lever trains it on the `long` (`wide`) preset's data_long.h5 (data_wide.h5),
# e.g. long+small+all+site;
# +own (or `own`) trains on the copy of data.h5 in which each recording is its own reference
# (benchmarks/own_reference.py, a prototype: not a leak train setting). Without CV: one markdown row
# per run from the default split (the CNN's validation and test-site file F1, test AUC, the baseline's test-site
# F1, seconds). With CV=K: `leak train --cv K` (grouped K-fold over the
# train+val sites), one row per run (pooled held-out F1, per-fold spread, AUC, baseline, chosen epochs, the final
# model's test-site F1), then one row per lever with every seed's held-out files pooled: the README's table.
# About 2 minutes per short-preset run with the default network, 20 s with `small`; --cv is about 6 runs' worth.
#   bash benchmarks/levers.sh 0 1 2                  # OUT=/tmp/leakhunter-levers by default
#   LEVERS="none gain" EPOCHS=60 bash benchmarks/levers.sh 3
#   CV=5 LEVERS="none all small small+all" bash benchmarks/levers.sh 0 1 2
#   CV=5 TRAIN_SEED=1 LEVERS="small+relative" bash benchmarks/levers.sh 0 1 2   # another training seed: runs/*-ts1
#   CV=5 BATCH=256 LEVERS="small+all+site" bash benchmarks/levers.sh 0 1 2       # another batch size: runs/*-bs256
#   OUT=/tmp/leakhunter-levers-high SYNTH="--leak-band high" CV=5 LEVERS="small wide+small" bash benchmarks/levers.sh 0
# A finished run is redone; an unfinished --cv run keeps its finished folds, so rerunning finishes it.
set -euo pipefail
LEAK=${LEAK:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/leak}
PYTHON=${PYTHON:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python}
OUT=${OUT:-/tmp/leakhunter-levers}
EPOCHS=${EPOCHS:-20}
TRAIN_SEED=${TRAIN_SEED:-}  # leak train --seed (default 0); set, the run directories end in -tsN
BATCH=${BATCH:-}  # leak train --batch-size (default 2048); set, the run directories end in -bsN (before -tsN)
JOBS=${JOBS:-2}
CV=${CV:-}
SYNTH=${SYNTH:-}  # more `leak data synth` flags for the corpora, e.g. "--leak-band high" (with its own OUT)
LEVERS=${LEVERS:-"none gain tilt mix mask all small small+all long"}
SMALL=${SMALL:-"--channels 8,16,32 --hidden 64"}  # the smaller network
for lever in $LEVERS; do  # what lever_flags cannot build is refused before anything runs
  case "$lever" in
    long+*own*|wide+*own*|*relative+*) echo "levers.sh: $lever: +own takes the short preset's data.h5," \
      "and +relative comes last (e.g. small+site+relative)" >&2; exit 2 ;;
  esac
done

lever_flags() {  # the dataset and training flags of one lever: none, long, small, an augment list, small+LIST;
  local lever=$1 level="" data=data.h5 reference=""  # any of them +relative (or `relative` alone) adds --level
  case "$lever" in  # relative, +site (or `site` alone) --reference sensor
    relative) lever=none level=" --level relative" ;;
    *+relative) lever=${lever%+relative} level=" --level relative" ;;
  esac
  case "$lever" in
    site) lever=none reference=" --reference sensor" ;;
    *+site) lever=${lever%+site} reference=" --reference sensor" ;;
    own) lever=none data=data_own.h5 ;;
    *+own) lever=${lever%+own} data=data_own.h5 ;;
  esac
  case "$lever" in  # long or wide, or long+/wide+ before any other lever: that preset's data_PRESET.h5
    long|wide) data=data_$lever.h5 lever=none ;;
    long+*|wide+*) data=data_${lever%%+*}.h5 lever=${lever#*+} ;;
  esac
  local augment=${lever#small+}
  [ "$augment" = all ] && augment=gain,tilt,mix,mask
  level=$reference$level
  case "$lever" in
    none) echo "$data$level" ;;
    small) echo "$data $SMALL$level" ;;
    small+*) echo "$data $SMALL --augment $augment$level" ;;
    *) echo "$data --augment $augment$level" ;;  # gain, tilt, mix, mask, all or a comma list of them
  esac
}

train_one() {  # LEVER SEED: one training, its log, one markdown row on stdout
  local lever=$1 seed=$2 flags data run started seconds
  flags=$(lever_flags "$lever")
  data=${flags%% *}
  flags=${flags#"$data"}
  [[ $lever =~ (^|\+)all$ ]] && lever=${lever%all}gain+tilt+mix+mask  # pool_levers.run_name's rule
  run="$OUT/seed$seed/runs/${lever//[+,]/_}${BATCH:+-bs$BATCH}${TRAIN_SEED:+-ts$TRAIN_SEED}${CV:+-cv$CV}"
  # a finished run is redone; an unfinished --cv run keeps its finished folds (training/cv.py reloads them)
  if [ -z "$CV" ] || [ -f "$run/cv.json" ]; then rm -rf "$run"; fi
  started=$(date +%s)
  # shellcheck disable=SC2086  # flags is a word list
  OMP_NUM_THREADS=1 nice -n 10 "$LEAK" train --mode binary --data "$OUT/seed$seed/$data" --out "$run" \
    --epochs "$EPOCHS" ${CV:+--cv $CV} ${TRAIN_SEED:+--seed $TRAIN_SEED} ${BATCH:+--batch-size $BATCH} $flags > "$run.log" 2>&1 || true  # H015 may warn
  seconds=$(( $(date +%s) - started ))
  if [ -n "$CV" ]; then  # the estimate line of training/cv.py, and the final model's test-site line
    local estimate test
    estimate=$(grep -E "^cross-validation \(" "$run.log" | tail -1)
    test=$(grep -E "^(best|kept) epoch" "$run.log" | tail -1)
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
export LEAK OUT EPOCHS CV SMALL LEVERS TRAIN_SEED BATCH

for seed in "${@:-0}"; do  # corpora first, built once and reused
  corpus="$OUT/seed$seed"
  mkdir -p "$corpus/runs"
  if [ -f "$corpus/corpus/manifest.csv" ] && [ "$(cat "$corpus/synth.flags" 2>/dev/null)" != "$SYNTH" ]; then
    echo "levers.sh: $corpus was synthesised with SYNTH='$(cat "$corpus/synth.flags" 2>/dev/null)', not" \
      "'$SYNTH': give another OUT" >&2
    exit 2
  fi
  # shellcheck disable=SC2086  # SYNTH is a word list
  [ -f "$corpus/corpus/manifest.csv" ] || "$LEAK" data synth "$corpus/corpus" --scenario sites --sites 12 \
    --files-per-class 40 --duration 10 --seed "$seed" $SYNTH > /dev/null
  printf '%s' "$SYNTH" > "$corpus/synth.flags"
  [ -f "$corpus/data.h5" ] || "$LEAK" data build "$corpus/corpus" -o "$corpus/data.h5" --workers 2 > /dev/null
  for preset in long wide; do
    if [[ " $LEVERS " =~ " $preset"[+\ ] ]] && [ ! -f "$corpus/data_$preset.h5" ]; then
      "$LEAK" data build "$corpus/corpus" -o "$corpus/data_$preset.h5" --workers 2 --preset "$preset" > /dev/null
    fi
  done
  if [[ " $LEVERS " =~ (" "|\+)own[+\ ] ]] && [ ! -f "$corpus/data_own.h5" ]; then  # the prototype copy
    "$PYTHON" "$(dirname "$0")/own_reference.py" "$corpus/data.h5" "$corpus/data_own.h5" > /dev/null
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
[ -n "$CV" ] || exit 0
# the README's row per lever: every seed's held-out files pooled (benchmarks/pool_levers.py)
echo
"$PYTHON" "$(dirname "$0")/pool_levers.py" "$OUT" "$CV" "${@:-0}" --levers "$LEVERS" ${TRAIN_SEED:+--train-seed "$TRAIN_SEED"} \
  ${BATCH:+--batch-size "$BATCH"}
