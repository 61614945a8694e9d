#!/usr/bin/env bash
# Run 19 cells (session 21), on the GPU machine after recv + setup:
#   bash exp/cells.sh W NAME:VARIANT [NAME:VARIANT ...]   VARIANT = base | f
# Each cell installs that yap_core wheel over /tmp/site, runs bench_both on the 1B,
# and moves its files to $OUT/NAME/.
set -uo pipefail
W="$1"; shift
for cell in "$@"; do
  name="${cell%%:*}"; variant="${cell##*:}"
  python3 -m pip install -q --no-deps --no-index --no-compile --upgrade --target /tmp/site "exp/$variant/yap_core-0.1.0-py3-none-any.whl" 2>&1 | grep -v WARNING | tail -3
  python3 -c "import sys; sys.path.insert(0,'/tmp/site'); import yap_core.connection as c, inspect; print('$name', '$variant', 'first-token send' if '_send_now' in inspect.getsource(c) else 'base')"
  t0=$(date +%s)
  WORKERS="$W" PIN=3 BENCH_ARGS="--concurrency= --sustain 16,64 --blocks 2 --sustain-s 3 --reply-spread 0.5" \
    bash gpu/check.sh bench_both 1b > "$OUT/$name.step.txt" 2>&1
  echo "$name rc=$? $(( $(date +%s) - t0 ))s"
  mkdir -p "$OUT/$name" && mv "$OUT"/bench_both_* "$OUT/$name/" && mv "$OUT/$name.step.txt" "$OUT/$name/"
  grep -a "added_ms\|hand-on\|done_hop\|hop in" "$OUT/$name/bench_both_w$W.md" | cut -c1-220 | head -12
done
