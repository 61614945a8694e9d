#!/usr/bin/env bash
# `yap bench` against `yap serve` on the scripted instant engine and classifier,
# the server pinned to CPU 0 and the benchmark (one process) to CPU 1, so one
# can see which of the two is the bottleneck: the server's CPU share over the
# run is printed after the benchmark's own report (which gives its own CPU and
# event-loop lag).
#
#   benchmarks/bench_scripted.sh -n 400 -c 200 --turns 3 [--json-out r.json] [--plot r.png]
set -euo pipefail
PORT=${PORT:-18950}
KEY=bench-scripted-key
LOG=$(mktemp /tmp/yap-bench-scripted.XXXXXX.log)
YAP=${YAP:-yap}

TEXT_API_KEY=$KEY INFERENCE_ENGINE=scripted TOOL_CLASSIFIER=scripted DEPLOY_MODE=both \
  MAX_CONCURRENT_CONNECTIONS=2000 WS_MAX_MESSAGES_PER_WINDOW=0 LOG_LEVEL=WARNING \
  taskset -c 0 "$YAP" serve --host 127.0.0.1 --port "$PORT" >"$LOG" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -f "$LOG"' EXIT
for _ in $(seq 300); do
  python3 -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:$PORT/healthz').status!=200)" 2>/dev/null && break
  kill -0 $SERVER 2>/dev/null || { cat "$LOG"; exit 1; }
  sleep 0.2
done

ticks() { awk '{print $14 + $15}' "/proc/$SERVER/stat"; }
HZ=$(getconf CLK_TCK)
t0=$(date +%s.%N); c0=$(ticks)
taskset -c 1 "$YAP" bench --server "ws://127.0.0.1:$PORT/ws" --api-key "$KEY" --no-progress "$@"
t1=$(date +%s.%N); c1=$(ticks)
python3 -c "print(f'server: {100*($c1-$c0)/$HZ/($t1-$t0):.0f}% of its one core over the run ({$t1-$t0:.1f} s, load average: $(cut -d' ' -f1-3 /proc/loadavg))')"
