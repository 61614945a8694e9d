#!/usr/bin/env bash
# The project's GPU check: runs ON the GPU machine (device `run` tool), from the
# repository root, after the vLLM kit of ../shared/gpu has been carried over.
# What it proves and what it measured is written up in docs/gpu-results.md.
#
# Here, before the run (docs/gpu-results.md has the exact sequence):
#   bash gpu/pack.sh            # project wheels + test tools into .wh/c4/proj,
#                               # the SmolLM2 GGUF and the trained classifier into .wh/x1..x3
# There, one command per carried piece, back to back (the machine stays warm ~30 s):
#   bash gpu/check.sh recv .wh/c1      (then .wh/c2, .wh/c3, .wh/x1, .wh/x2, .wh/x3)
#   bash gpu/check.sh recv .wh/c4 && bash gpu/check.sh setup && bash gpu/check.sh smoke
#   bash gpu/check.sh conformance && bash gpu/check.sh protocol
#   bash gpu/check.sh bench && bash gpu/check.sh bench_si4
#   WORKERS=4 PIN=3 bash gpu/check.sh bench_both 1b   (raw and ws on one engine core;
#     BENCH_ARGS="--concurrency 1 --sustain= --rounds-c1 60": only the c=1 cells and the aborts)
#   PIN=3 LOAD=4 BENCH_ARGS="--sustain 64 --blocks 2 --sustain-s 6" bash gpu/check.sh bench_load 1b
#     (a control: raw AsyncLLM alone, host quiet vs 4 spinning processes;
#     add --load-kind memory to BENCH_ARGS for processes that copy memory instead)
#   bash gpu/check.sh extras
# (Files land in $OUT, which the device tool sets and empties before each command.)
# Each step writes STEP.log (and JSON/markdown where it has figures) under $OUT.
set -uo pipefail
ROOT="$PWD"
WH=/tmp/wh; SITE=/tmp/site; XTRA=/tmp/xtra
OUT="${OUT:-/tmp/out}"
mkdir -p "$WH" "$OUT" "$XTRA"
export PYTHONPATH="$SITE" PATH="$SITE/bin:$PATH" PYTHONUNBUFFERED=1 \
       VLLM_USE_FLASHINFER_SAMPLER=0 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 \
       HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OTEL_SDK_DISABLED=true
MODEL="$WH/models/llama-1b"                         # Llama-3.2-1B shape, random weights
GGUF="$XTRA/SmolLM2-135M-Instruct.Q4_1.gguf"       # real text
T0=$(date +%s)
step="${1:?step: recv DIR | setup | smoke | engine [TAG] | conformance | protocol | bench | bench_si4 | classifier | extras | quant | awq}"
shift
log() { echo "[check $step +$(( $(date +%s) - T0 ))s] $*"; }

# A `yap quantize` checkpoint DIR, loaded by the vLLM engine plugin: what it
# detected, the kernel vLLM chose, greedy text, abort, prefill (engine_smoke.py).
smoke_quantized() {
  local d="$1" name rc; name=$(basename "$1"); log "quantized checkpoint $name on vLLM"
  cp "$d/yap-quant.json" "$OUT/$name.yap-quant.json"
  python3 gpu/engine_smoke.py --model "$d" --skip-server --out "$OUT/quant_$name.json" > "$OUT/quant_$name.log" 2>&1
  rc=$?; grep -aiE "quantiz|marlin|kernel|Error|Traceback" "$OUT/quant_$name.log" | cut -c1-300 | tail -15
  python3 -c "import json,sys;d=json.load(open(sys.argv[1]));print({k:d.get(k) for k in ('quantization','engine_start_s','greedy_text','greedy_deterministic','abort','prefill')})" "$OUT/quant_$name.json"
  return $rc
}

case "$step" in
recv)
  for d in "$@"; do cp -r "$ROOT/$d"/. "$WH"/; done
  du -sh "$WH";;
setup)
  bash "$WH/device_step.sh" install || exit 2
  python3 -m pip install -q --no-deps --no-index --no-compile --target "$SITE" "$WH"/proj/*.whl || exit 3
  if ls "$WH"/xtra.tar.part-* >/dev/null 2>&1; then
    cat "$WH"/xtra.tar.part-* | tar -x -C "$XTRA" && rm -f "$WH"/xtra.tar.part-*
  fi
  ls -la "$XTRA"
  { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c "import sys,torch,vllm,transformers;print(sys.version.split()[0],'torch',torch.__version__,'vllm',vllm.__version__,'transformers',transformers.__version__)"
    python3 -m pip list --path "$SITE" 2>/dev/null | grep -iE '^(yap|vllm|pytest|hypercorn|starlette|msgspec|websockets) '
  } 2>&1 | tee "$OUT/setup.txt";;
smoke)
  log "engine + server smoke on $MODEL (dummy weights)"
  python3 gpu/engine_smoke.py --model "$MODEL" --load-format dummy --out "$OUT/smoke.json" > "$OUT/smoke.log" 2>&1
  rc=$?; grep -aE "Error|error|Traceback|\[smoke\]" "$OUT/smoke.log" | cut -c1-300 | tail -25; exit $rc;;
conformance)
  # The engine conformance kit (yap_core.testing) on the vLLM engine: random 1B
  # weights (no check needs meaningful text: stop strings are cut from the reply itself).
  log "conformance kit on vLLM"
  CHAT_MODEL="$MODEL" CHAT_LOAD_FORMAT=dummy ATTENTION_BACKEND=FLASH_ATTN \
  CHAT_MAX_LEN=4096 CHAT_GPU_FRAC=0.80 TEXT_API_KEY=unused DEPLOY_MODE=chat INFERENCE_ENGINE=vllm \
    python3 -m pytest -q gpu/test_vllm_conformance.py --yap-engine vllm --junitxml="$OUT/conformance.xml" \
    > "$OUT/conformance.log" 2>&1
  rc=$?; tail -n 30 "$OUT/conformance.log" | cut -c1-300; exit $rc;;
protocol)
  # The end-to-end protocol tests that need a real model (tests/test_protocol_hf.py:
  # the default deployment, chat + the trained classifier) against `yap serve` with
  # INFERENCE_ENGINE=vllm; tests/conftest.py reads YAP_TEST_REAL_ENGINE_ENV.
  CLS=$(ls -d "$WH"/classifier/* "$XTRA"/classifier/* 2>/dev/null | head -1)
  [ -n "$CLS" ] || { echo "the trained classifier was not carried (gpu/pack.sh makes .wh/p1)"; exit 4; }
  log "protocol end-to-end tests on yap serve + vLLM (classifier $CLS)"
  # WORKERS=N in the environment: the server runs SERVER_WORKERS=N processes on one engine core.
  YAP_TEST_REAL_ENGINE_ENV="{\"INFERENCE_ENGINE\":\"vllm\",\"CHAT_MODEL\":\"$MODEL\",\"CHAT_LOAD_FORMAT\":\"dummy\",\"ATTENTION_BACKEND\":\"FLASH_ATTN\",\"CHAT_MAX_LEN\":\"4096\",\"TOOL_MODEL\":\"$CLS\",\"SERVER_WORKERS\":\"${WORKERS:-1}\"}" \
    python3 -m pytest -q tests/test_protocol_hf.py --junitxml="$OUT/protocol.xml" > "$OUT/protocol.log" 2>&1
  rc=$?; tail -n 30 "$OUT/protocol.log" | cut -c1-300; exit $rc;;
bench|bench_raw|bench_ws|bench_report)
  # Raw AsyncLLM vs the WebSocket path (benchmarks/vllm_bench.py), random weights.
  # `bench [1b|8b]` runs all three parts; each part alone fits one device call
  # (8B: raw, then ws, then report). Results also stay in /tmp/res/<model>-si<N>.
  # SI=N in the environment: STREAM_INTERVAL for both phases (default 1);
  # WORKERS=N: the WebSocket path on SERVER_WORKERS=N processes (default 1).
  size="${1:-1b}"; SI="${SI:-1}"; W="${WORKERS:-1}"; RES=/tmp/res/$size-si$SI; mkdir -p "$RES"
  M="$WH/models/llama-$size"; rc=0
  if [ "$step" = bench ] || [ "$step" = bench_raw ]; then
    log "benchmark ($size): raw AsyncLLM"
    python3 benchmarks/vllm_bench.py raw --model "$M" --load-format dummy --stream-interval "$SI" --out "$RES/bench_raw.json" > "$RES/bench_raw.log" 2>&1 || rc=1
    grep -a "^\[raw\]\|Error\|Traceback" "$RES/bench_raw.log" | cut -c1-400 | tail -24
  fi
  if [ "$step" = bench ] || [ "$step" = bench_ws ]; then
    log "benchmark ($size): WebSocket path"
    python3 benchmarks/vllm_bench.py ws --model "$M" --load-format dummy --stream-interval "$SI" --workers "$W" --out "$RES/bench_ws_w$W.json" > "$RES/bench_ws_w$W.log" 2>&1 || rc=1
    grep -a "^\[ws\]\|Error\|Traceback" "$RES/bench_ws_w$W.log" | cut -c1-400 | tail -24
  fi
  if [ "$step" = bench ] || [ "$step" = bench_report ]; then
    python3 benchmarks/vllm_bench.py report "$RES/bench_raw.json" "$RES/bench_ws_w$W.json" --out "$RES/bench_w$W.md" || rc=1
  fi
  cp "$RES"/*.json "$RES"/*.md "$OUT"/ 2>/dev/null
  (cd "$RES" && tar czf "$OUT/bench_logs_$size-si$SI.tgz" *.log 2>/dev/null)
  exit $rc;;
bench_both)
  # Raw AsyncLLM and the WebSocket path on ONE engine core (vllm_bench.py both):
  # no engine-to-engine variance between the two sides. WORKERS=N worker processes.
  size="${1:-1b}"; SI="${SI:-1}"; W="${WORKERS:-1}"; RES=/tmp/res/$size-si$SI; mkdir -p "$RES"
  log "benchmark ($size): raw and WebSocket on one engine core, $W worker(s)"
  python3 benchmarks/vllm_bench.py both --model "$WH/models/llama-$size" --load-format dummy --stream-interval "$SI" \
    --workers "$W" --pin-engine "${PIN:-0}" ${QUICK:+--quick} ${BENCH_ARGS:-} --out "$RES/bench_both_w$W.json" > "$RES/bench_both_w$W.log" 2>&1
  rc=$?; grep -a "^\[raw\]\|^\[ws\]\|Error\|Traceback" "$RES/bench_both_w$W.log" | cut -c1-300 | tail -30
  python3 benchmarks/vllm_bench.py report "$RES/bench_both_w$W.json" --out "$RES/bench_both_w$W.md" >/dev/null || rc=1
  cp "$RES"/bench_both_w$W.json "$RES"/bench_both_w$W.md "$OUT"/ 2>/dev/null
  (cd "$RES" && tar czf "$OUT/bench_both_logs_$size-si$SI-w$W.tgz" bench_both_w$W.log bench_both_w$W.server.log bench_both_w$W.aborts bench_both_w$W.aborts.steps bench_both_w$W.aborts.firsts 2>/dev/null)
  exit $rc;;
bench_load)
  # A control for the sustained cells (vllm_bench.py load): raw AsyncLLM alone on
  # the engine core pinned as in bench_both, windows with the host quiet and with
  # LOAD=N processes on the other CPUs (no Yap code in them): spinning, or with
  # --load-kind memory in BENCH_ARGS copying memory.
  size="${1:-1b}"; RES=/tmp/res/$size-load; mkdir -p "$RES"
  log "load control ($size): ${LOAD:-4} load processes"
  python3 benchmarks/vllm_bench.py load --model "$WH/models/llama-$size" --load-format dummy --pin-engine "${PIN:-3}" \
    --load-procs "${LOAD:-4}" ${BENCH_ARGS:-} --out "$RES/bench_load.json" > "$RES/bench_load.log" 2>&1
  rc=$?; grep -a "^\[load\]\|Error\|Traceback" "$RES/bench_load.log" | cut -c1-2000 | tail -12
  cp "$RES"/bench_load.json "$RES"/bench_load.log "$OUT"/ 2>/dev/null; cp "$RES"/bench_load.aborts.steps "$OUT"/ 2>/dev/null
  exit $rc;;
bench_si4)
  # The WebSocket path again with STREAM_INTERVAL=4 (vLLM streams every 4th token):
  # how much of the WS overhead under load is per-token work. Compare with bench_ws.json.
  log "benchmark: WebSocket path with STREAM_INTERVAL=4"
  python3 benchmarks/vllm_bench.py ws --model "$MODEL" --load-format dummy --stream-interval 4 \
    --out "$OUT/bench_ws_si4.json" > "$OUT/bench_ws_si4.log" 2>&1
  rc=$?; grep -a "^\[ws\]\|Error\|Traceback" "$OUT/bench_ws_si4.log" | cut -c1-400 | tail -20; exit $rc;;
classifier)
  # The trained classifier on CUDA (fp16, CUDA graphs): graphs equal eager, then
  # the latency benchmark. The model comes with .wh/p1 (gpu/pack.sh).
  CLS=$(ls -d "$WH"/classifier/* "$XTRA"/classifier/* 2>/dev/null | head -1)
  [ -n "$CLS" ] || { echo "the trained classifier was not carried (gpu/pack.sh makes .wh/p1)"; exit 4; }
  log "classifier on cuda ($CLS)"
  YAP_GPU_CLASSIFIER="$CLS" python3 -m pytest -q gpu/test_classifier_cuda.py > "$OUT/classifier_cuda.log" 2>&1
  rc=$?; tail -n 3 "$OUT/classifier_cuda.log" | cut -c1-300
  python3 benchmarks/classifier_bench.py --device cuda --model "$CLS" --out "$OUT/classifier_bench.json" > "$OUT/classifier_bench.log" 2>&1 || rc=1
  tail -n 22 "$OUT/classifier_bench.log" | cut -c1-300; exit $rc;;
extras)
  # Other engineers' GPU proofs that need the same kit: ModelOpt FP8 -> vLLM
  # (quantization="modelopt"), the GPU telemetry gauges.
  rc=0
  if [ -f gpu/modelopt_fp8_check.py ] && [ -f "$GGUF" ]; then
    log "ModelOpt FP8 -> vLLM check"
    python3 gpu/modelopt_fp8_check.py --model "$GGUF" --phase-timeout 200 --out "$OUT/modelopt_fp8.json" > "$OUT/modelopt_fp8.log" 2>&1 || rc=1
    tail -n 15 "$OUT/modelopt_fp8.log" | cut -c1-300
  else log "ModelOpt check skipped (script or GGUF missing)"; fi
  if [ -f benchmarks/gpu_telemetry_check.py ]; then
    log "GPU telemetry gauges check"
    python3 benchmarks/gpu_telemetry_check.py > "$OUT/gpu_telemetry.log" 2>&1 || rc=1
    tail -n 8 "$OUT/gpu_telemetry.log" | cut -c1-300
  fi
  exit $rc;;
yapbench)
  # `yap bench` (the voice team's benchmark) against `yap serve` on vLLM, chat only,
  # random 1B weights: c=1, 16 and 64, then 64 with every session prefilled first.
  log "yap bench against yap serve on vLLM"
  PORT=18777
  TEXT_API_KEY=gpu-bench INFERENCE_ENGINE=vllm DEPLOY_MODE=chat CHAT_MODEL="$MODEL" CHAT_LOAD_FORMAT=dummy \
  ATTENTION_BACKEND=FLASH_ATTN CHAT_MAX_LEN=4096 CHAT_GPU_FRAC=0.80 CHAT_MAX_OUT=150 \
  WS_MAX_MESSAGES_PER_WINDOW=0 MAX_CONCURRENT_CONNECTIONS=256 \
    python3 -c "from yap_core.cli import main; main()" serve --port $PORT --no-access-log > "$OUT/yapbench_server.log" 2>&1 &
  SRV=$!
  for _ in $(seq 1 300); do python3 -c "import urllib.request as u;u.urlopen('http://127.0.0.1:$PORT/healthz',timeout=2)" 2>/dev/null && break; sleep 1; done
  log "server ready"
  rc=0
  for spec in "1 1 10" "16 16 48" "64 64 128"; do
    set -- $spec
    python3 -c "from yap_core.cli import main; main()" bench --server ws://127.0.0.1:$PORT/ws --api-key gpu-bench \
      -c $1 -n $3 --turns 3 --max-tokens 150 --no-progress $([ "$1" = 1 ] || echo --json-out "$OUT/yapbench_c$1.json") > "$OUT/yapbench_c$1.txt" 2>&1 || rc=1
    tail -n 20 "$OUT/yapbench_c$1.txt"
  done
  python3 -c "from yap_core.cli import main; main()" bench --server ws://127.0.0.1:$PORT/ws --api-key gpu-bench \
    -c 64 -n 128 --turns 3 --max-tokens 150 --prefill --no-progress --json-out "$OUT/yapbench_c64_prefill.json" > "$OUT/yapbench_c64_prefill.txt" 2>&1 || rc=1
  tail -n 20 "$OUT/yapbench_c64_prefill.txt"
  kill $SRV; wait $SRV
  exit $rc;;
quant)
  # A `yap quantize --engine vllm` checkpoint (gpu/pack.sh --quant DIR, carried as
  # .wh/q1..qN and received with `recv`) loaded by the vLLM engine plugin: what it
  # detected, the kernel vLLM chose, greedy text, abort, prefill (engine_smoke.py).
  # ENFORCE_EAGER=1 in the environment skips the CUDA graph capture (a shorter start).
  cat "$WH"/quant.tar.part-* | tar -x -C "$XTRA" || exit 4
  rc=4  # stays 4 if no checkpoint with a yap-quant.json arrived
  for d in "$XTRA"/*/; do
    [ -f "$d/yap-quant.json" ] || continue
    if smoke_quantized "${d%/}"; then [ "$rc" = 4 ] && rc=0; else rc=1; fi
  done
  exit $rc;;
awq)
  # llmcompressor's AWQ on the GPU it wants (on the CPU it ran only with page-locked
  # memory patched out), built in an environment without vLLM as docs/vllm.md tells
  # users (the two pin different compressed-tensors releases): a venv over the
  # image's own packages, with what .wh/a1 carries (gpu/pack.sh --awq-kit) and the
  # project's wheels. Then the vLLM plugin loads it, as `quant` does a carried one.
  # After `setup`: bash gpu/check.sh recv .wh/a1 && ENFORCE_EAGER=1 bash gpu/check.sh awq
  Q=/tmp/qenv; SRC=/tmp/awq-src; DST="$XTRA/llama1b-${AWQ_LAYERS:-4}l-awq"
  [ -d "$WH/qkit" ] || { echo "the llmcompressor kit was not carried (gpu/pack.sh --awq-kit makes .wh/a1)"; exit 4; }
  log "yap quantize --format awq: a random-weight 1B-wide model of ${AWQ_LAYERS:-4} layers"
  ( unset PYTHONPATH  # not the vLLM kit's site: its compressed-tensors is 0.17.0
    # A venv that sees the image's packages (torch, transformers, pip) after its own,
    # through a .pth of python3's site directories: --system-site-packages would
    # miss them if python3 is itself a venv.
    python3 -m venv --without-pip "$Q" &&
    python3 -c "import sys; print('\n'.join(p for p in sys.path if p.endswith('-packages')))" \
      > "$("$Q/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/image.pth" &&
    "$Q/bin/python" -m pip install -q --no-index --find-links "$WH/qkit" "llmcompressor==0.14.0.1" msgspec &&
    "$Q/bin/python" -m pip install -q --no-deps --no-index "$WH"/proj/yap_core-*.whl "$WH"/proj/yap_engines_vllm-*.whl &&
    { "$Q/bin/python" -m pip list 2>/dev/null | grep -iE '^(torch|transformers|llmcompressor|compressed-tensors|datasets|pyarrow|huggingface-hub|yap-core|yap-engines-vllm) '; true; } &&
    "$Q/bin/python" gpu/make_float_model.py "$MODEL" "$SRC" --layers "${AWQ_LAYERS:-4}" &&
    "$Q/bin/yap" quantize --engine vllm --format awq --out "$DST" --calib-data yap_core/src/yap_core/data/tool_turns.jsonl \
      --calib-samples 32 --calib-seq-len 128 "$SRC"
  ) > "$OUT/awq_build.log" 2>&1
  rc=$?; grep -aiE "error|Traceback|wrote|group size|parameters|^(torch|transformers|llmcompressor|compressed|datasets|pyarrow|huggingface|yap)" \
    "$OUT/awq_build.log" | cut -c1-300 | tail -20
  [ "$rc" = 0 ] || exit 1
  smoke_quantized "$DST"; exit $?;;
engine)
  # The engine part of the smoke alone (no server), under the engine settings in the
  # environment, e.g. `KV_DTYPE=fp8 ENFORCE_EAGER=1 bash gpu/check.sh engine kv-fp8`:
  # the JSON's kv_cache says what vLLM applied.
  tag="${1:-default}"; log "engine smoke ($tag) on $MODEL"
  python3 gpu/engine_smoke.py --model "$MODEL" --load-format dummy --skip-server --out "$OUT/engine_$tag.json" > "$OUT/engine_$tag.log" 2>&1
  rc=$?; grep -aiE "kv cache|kv_cache|fp8|Error|Traceback" "$OUT/engine_$tag.log" | cut -c1-300 | tail -15
  python3 -c "import json,sys;d=json.load(open(sys.argv[1]));print({k:d.get(k) for k in ('kv_cache','engine_start_s','greedy_deterministic','abort','prefill','concurrent_finishes')})" "$OUT/engine_$tag.json"
  exit $rc;;
healthz)
  # /healthz keeps answering (503 starting) while vLLM starts, then a turn streams.
  log "healthz during vLLM start"
  python3 gpu/healthz_during_start.py --model "$MODEL" --out "$OUT/healthz.json" > "$OUT/healthz.log" 2>&1
  rc=$?; tail -n 5 "$OUT/healthz.log" | cut -c1-600; exit $rc;;
*) echo "unknown step $step"; exit 64;;
esac
