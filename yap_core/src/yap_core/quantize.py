"""`yap quantize`: build a quantized checkpoint with an engine plugin's quantizer.

The core only routes: it loads the plugin named by ``--engine``, asks its
quantizer which formats the GPU's SM architecture supports, refuses anything
else with the list, and calls ``build``. What a format means is the plugin's.
Also here: reading what a checkpoint already is from its config files, which
every engine needs to decide how to load it.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from yap_core.contracts import CalibrationConfig
from yap_core.plugins import PluginError, PluginHost
from yap_core.settings import Config, SettingsError


def read_quant_method(checkpoint: Path) -> str | None:
    """The quantization a checkpoint declares in its own files, or None.

    Looks at ``config.json``'s ``quantization_config.quant_method`` (AWQ, GPTQ,
    compressed-tensors, FP8, ModelOpt exports) and ModelOpt's
    ``hf_quant_config.json``. File and folder names are not trusted.
    """
    if not checkpoint.is_dir():
        return None
    config = read_json_object(checkpoint / "config.json")
    qc = config.get("quantization_config") if config else None
    if isinstance(qc, dict) and isinstance(qc.get("quant_method"), str):
        return qc["quant_method"].lower()
    modelopt = read_json_object(checkpoint / "hf_quant_config.json")
    if modelopt and isinstance(modelopt.get("quantization"), dict):
        return "modelopt"
    return None


def read_json_object(path: Path) -> dict | None:
    """A checkpoint's JSON file as a dict; None when missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def parse_sm(text: str) -> tuple[int, int]:
    """'9.0' or '90' -> (9, 0)."""
    cleaned = text.strip().lower().removeprefix("sm").removeprefix("_")
    try:
        if "." in cleaned:
            major, minor = cleaned.split(".", 1)
            return int(major), int(minor)
        value = int(cleaned)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an SM version such as 9.0 or 89") from None
    return value // 10, value % 10


def current_sm() -> tuple[int, int] | None:
    """The first CUDA device's SM version, or None without a GPU (or torch)."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return tuple(torch.cuda.get_device_capability(0))  # type: ignore[return-value]


@click.command("quantize")
@click.argument("model")
@click.option("--engine", required=True, help="Engine plugin whose quantizer builds it (vllm, trt).")
@click.option("--format", "fmt", default=None, help="Format; omit to list what this GPU supports.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), help="Output folder.")
@click.option("--sm", default=None, help="Target SM version (e.g. 9.0); default: this machine's GPU.")
@click.option("--calib-data", default=None, help="Local calibration file (JSONL with 'text', or plain text).")
@click.option("--calib-samples", default=128, show_default=True, type=click.IntRange(1))
@click.option("--calib-seq-len", default=512, show_default=True, type=click.IntRange(8))
@click.option("--calib-batch-size", default=1, show_default=True, type=click.IntRange(1))
@click.option("--force", is_flag=True, help="Rebuild even if a matching build exists.")
def quantize_command(
    model: str,
    engine: str,
    fmt: str | None,
    out_dir: Path | None,
    sm: str | None,
    calib_data: str | None,
    calib_samples: int,
    calib_seq_len: int,
    calib_batch_size: int,
    force: bool,
) -> None:
    """Quantize MODEL (local folder or hub id) for an engine."""
    target = parse_sm(sm) if sm else current_sm()
    if target is None:
        raise click.UsageError("no CUDA GPU found: pass --sm (e.g. --sm 9.0) to choose the target architecture")
    try:
        host = PluginHost()
        host.load(engine)
        quantizer = host.quantizer_factory(engine)(Config.discover())
    except (PluginError, SettingsError) as exc:
        raise click.ClickException(str(exc)) from exc
    formats = quantizer.formats(target)
    sm_text = f"SM {target[0]}.{target[1]}"
    if fmt is None:
        click.echo(f"{engine} ({quantizer.name}) on {sm_text}: {', '.join(formats) or 'none'}")
        return
    if fmt not in formats:
        raise click.ClickException(
            f"format {fmt!r} is not available for {engine} on {sm_text}; available: {', '.join(formats) or 'none'}"
        )
    if out_dir is None:
        raise click.UsageError("--out is required to build")
    calibration = CalibrationConfig(
        dataset=calib_data, num_samples=calib_samples, seq_len=calib_seq_len, batch_size=calib_batch_size
    )
    try:
        result = quantizer.build(model, fmt, out_dir, calibration=calibration, force=force, progress=click.echo)
    except (ValueError, RuntimeError) as exc:  # the plugin's refusal or failure: one clear line, no traceback
        raise click.ClickException(str(exc)) from exc
    state = "reused" if result.reused else "built"
    click.echo(f"{state} {result.format} checkpoint in {result.out_dir} (metadata: {result.metadata_file})")


def read_context_length(checkpoint: Path) -> int | None:
    """The context length a local checkpoint's ``config.json`` declares
    (``max_position_embeddings``); None for a hub id, a missing file or no such field."""
    config = read_json_object(checkpoint / "config.json")
    value = config.get("max_position_embeddings") if config else None
    return value if isinstance(value, int) else None
