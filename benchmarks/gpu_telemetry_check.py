"""Check, on a GPU host, that the GPU gauges export per-device points.

Starts the tests' loopback OTLP/HTTP receiver, a Telemetry pointed at it, puts
some memory on each GPU with torch (when torch has CUDA), flushes, and prints
what arrived. Exit 1 when GPUs are present but no GPU points came; on a CPU box
it checks that none came and exits 0.

    python benchmarks/gpu_telemetry_check.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from otlp_receiver import OtlpReceiver  # noqa: E402
from yap_core.settings import CoreSettings  # noqa: E402
from yap_core.telemetry import PREFIX, Telemetry  # noqa: E402


def gpu_count() -> int:
    try:
        import pynvml

        pynvml.nvmlInit()
        return int(pynvml.nvmlDeviceGetCount())
    except Exception:
        return 0


def main() -> int:
    n = gpu_count()
    held = []
    try:
        import torch

        if torch.cuda.is_available():
            held = [torch.empty(256 * 2**20, dtype=torch.uint8, device=f"cuda:{i}") for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    with OtlpReceiver() as receiver:
        t = Telemetry(engine="check", settings=CoreSettings(otel_exporter_otlp_endpoint=receiver.url,
                                                            otel_metric_export_interval=200))
        t.force_flush()
        points = receiver.metric_points()
        t.shutdown()
    memory = points.get(PREFIX + "gpu.memory_used", [])
    util = points.get(PREFIX + "gpu.utilization", [])
    print(f"GPUs seen by NVML: {n}; torch tensors held: {len(held)}")
    for attrs, value in memory:
        print(f"  gpu.memory_used {attrs}: {value / 2**20:.0f} MiB")
    for attrs, value in util:
        print(f"  gpu.utilization {attrs}: {value:.0f}%")
    devices = {a.get("gpu.device") for a, _ in memory}
    if n and devices != set(range(n)):
        print(f"FAIL: expected memory points for devices 0..{n - 1}, got {sorted(devices)}")
        return 1
    if not n and (memory or util):
        print("FAIL: GPU points on a machine without a GPU")
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
