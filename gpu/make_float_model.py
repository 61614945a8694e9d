"""A float checkpoint with random weights, for a quantizer to build from on the
GPU machine (which has no model weights and no hub): the config and tokenizer
of a model folder the kit carries (config.json only, for vLLM's dummy load),
fewer layers if asked, bf16 weights drawn on the GPU and saved as safetensors.

    python3 gpu/make_float_model.py /tmp/wh/models/llama-1b /tmp/awq-src --layers 4

Random weights make meaningless text, but a quantizer's whole path (calibration,
scales, packing, the checkpoint's ``quantization_config``) and vLLM's loading
of the result run as they do on a real model of that width.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config_dir", type=Path, help="a folder with config.json and the tokenizer files")
    ap.add_argument("out", type=Path)
    ap.add_argument("--layers", type=int, default=0, help="num_hidden_layers (0: the config's)")
    args = ap.parse_args()

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(args.config_dir)
    if args.layers:
        config.num_hidden_layers = args.layers
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(args.out)
    for f in args.config_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            shutil.copy(f, args.out / f.name)
    print(f"{args.out}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, "
          f"{config.num_hidden_layers} layers, hidden {config.hidden_size}")  # fmt: skip


if __name__ == "__main__":
    main()
