#!/usr/bin/env bash
# The README's `sites` table (section "leak data synth"): for each corpus seed, a `sites` corpus (12 sites, 40 files
# per class, 10 s), the default build and split, the default binary training, and the last lines of its log: the
# CNN's and the baseline's validation and test-site F1 and AUC. About 3-7 minutes per seed on 2 cores.
#   bash benchmarks/sites_quality.sh 0 1 2 3 4        # OUT=/tmp/leakhunter-sites by default
#   SCENARIO=classes bash benchmarks/sites_quality.sh 0  # the plumbing corpus, same sizes, for comparison
set -euo pipefail
LEAK=${LEAK:-$(dirname "$0")/../.venv/bin/leak}
OUT=${OUT:-/tmp/leakhunter-sites}
SCENARIO=${SCENARIO:-sites}
knobs=(--scenario "$SCENARIO")
[ "$SCENARIO" = sites ] && knobs+=(--sites 12)
for seed in "${@:-0}"; do
  run="$OUT/seed$seed"
  rm -rf "$run" && mkdir -p "$run"
  "$LEAK" data synth "$run/corpus" "${knobs[@]}" --files-per-class 40 --duration 10 --seed "$seed" > /dev/null
  "$LEAK" data build "$run/corpus" -o "$run/data.h5" --workers 2 > "$run/build.log"
  started=$(date +%s)
  "$LEAK" train --mode binary --data "$run/data.h5" --out "$run/run" > "$run/train.log" 2>&1 || true  # H015 may warn
  echo "$SCENARIO corpus seed $seed ($(( $(date +%s) - started )) s of training):"
  grep -E "^best epoch|^baseline \(" "$run/train.log" | tail -2 | sed "s/^/  /"
done
