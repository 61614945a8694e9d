"""Fixed input shapes for the classifier, and CUDA graphs over them.

At batch 1 a MiniLM forward on an H100 is ~200 tiny kernels whose launch
cost (Python + driver) is larger than their run time. A CUDA graph replays
them all with one launch, but only for the exact shapes it was captured at.
So inputs are padded up to a bucket, (batch, length) from a small grid:
extra tokens carry attention mask 0, extra rows are thrown away.

The padding and the forward are plain torch and run on any device, so CI
checks on the CPU that padding to a bucket leaves the probabilities as they
were; only ``CudaGraphs`` needs a GPU.

Only torch and the standard library are imported, so the GPU benchmark can
use this module without the project's venv.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# Token lengths captured (then the window itself, if it is not one of them).
# Doubling keeps the padding waste under 2x and the graph count small.
LENGTHS = (32, 64, 128, 256, 512)
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class CaptureError(RuntimeError):
    """Capturing the CUDA graphs failed (the caller names TOOL_CUDA_GRAPHS)."""


def length_buckets(max_tokens: int) -> tuple[int, ...]:
    """Lengths to capture for a window of ``max_tokens``: every input fits the largest."""
    return tuple(sorted({n for n in LENGTHS if n < max_tokens} | {max_tokens}))


def batch_buckets(batch_size: int) -> tuple[int, ...]:
    """Batch sizes to capture for micro-batches of at most ``batch_size``."""
    return tuple(sorted({n for n in BATCHES if n < batch_size} | {batch_size}))


def fit(n: int, buckets: Sequence[int]) -> int | None:
    """The smallest bucket holding ``n``, or None when ``n`` is larger than all."""
    return next((b for b in buckets if b >= n), None)


def pack(
    enc: Mapping[str, Any], names: Sequence[str], *, batch: int, length: int, pad_id: int
) -> Any:
    """One int64 tensor [len(names), batch, length] holding ``enc`` padded at the
    end of each row and with extra rows; ``names`` are the model's input names.

    Padded tokens get the pad id and attention mask 0 (BERT-style position
    embeddings are absolute, so right padding moves no real token). Extra rows
    see one token, never zero: an all-masked row can give NaN in attention.
    One tensor, so moving it to the GPU is one copy."""
    import torch

    rows, cols = enc[names[0]].shape
    if rows > batch or cols > length:
        raise ValueError(f"a {rows}x{cols} input does not fit the {batch}x{length} bucket")
    out = torch.zeros((len(names), batch, length), dtype=torch.long)
    for i, name in enumerate(names):
        if name == "input_ids":
            out[i].fill_(pad_id)
        elif name == "attention_mask":
            out[i, rows:, 0] = 1
        out[i, :rows, :cols] = enc[name]
    return out


def forward(model: Any, packed: Any, names: Sequence[str]) -> Any:
    """P(label) rows, fp32, for a packed input: the softmax runs in fp32 whatever
    the model's dtype, so probabilities near the threshold are not rounded to bf16."""
    logits = model(**{name: packed[i] for i, name in enumerate(names)}).logits
    return logits.float().softmax(dim=-1)


class CudaGraphs:
    """One CUDA graph per (batch, length) bucket over ``forward``.

    Captured once at load; ``run`` is then one host-to-device copy, one graph
    launch and one device-to-host copy. Not thread-safe: the classifier's one
    worker thread calls it (graphs share one memory pool, so two must never
    run at once).
    """

    def __init__(self, model: Any, names: Sequence[str], *, batches: Sequence[int], lengths: Sequence[int], pad_id: int) -> None:
        self.model = model
        self.names = tuple(names)
        self.batches = tuple(sorted(batches))
        self.lengths = tuple(sorted(lengths))
        self.pad_id = pad_id
        self._graphs: dict[tuple[int, int], tuple[Any, Any, Any]] = {}  # bucket -> (graph, static input, static probs)

    def capture(self) -> None:
        """Capture every bucket, largest first so the smaller ones reuse its memory."""
        import torch

        device = next(self.model.parameters()).device
        pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream(device)
        with torch.inference_mode():
            for batch in reversed(self.batches):
                for length in reversed(self.lengths):
                    try:
                        self._graphs[(batch, length)] = self._capture_one(batch, length, device, pool, side)
                    except Exception as exc:  # any capture failure is fatal: say which shape
                        raise CaptureError(f"capture at batch {batch} x {length} tokens failed: {exc}") from exc
        torch.cuda.synchronize(device)

    def _capture_one(self, batch: int, length: int, device: Any, pool: Any, side: Any) -> tuple[Any, Any, Any]:
        import torch

        static = pack(
            {n: torch.ones((batch, length), dtype=torch.long) for n in self.names},
            self.names,
            batch=batch,
            length=length,
            pad_id=self.pad_id,
        ).to(device)
        # Warm up outside capture: the first calls set up cuBLAS handles and
        # workspaces, which must not happen while capturing.
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                forward(self.model, static, self.names)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: CUDA work on other threads (a chat engine in the same
        # process) goes on during capture instead of breaking it.
        with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
            probs = forward(self.model, static, self.names)
        return graph, static, probs

    def run(self, enc: Mapping[str, Any]) -> Any | None:
        """Probabilities (CPU, fp32) for ``enc`` (CPU tensors), or None when it is
        larger than every captured bucket (the caller then runs it eager)."""
        import torch

        rows, cols = enc[self.names[0]].shape
        batch, length = fit(rows, self.batches), fit(cols, self.lengths)
        if batch is None or length is None:
            return None
        graph, static, probs = self._graphs[(batch, length)]
        # The static tensors were made under inference mode (at capture), and
        # only there may they be written to.
        with torch.inference_mode():
            static.copy_(pack(enc, self.names, batch=batch, length=length, pad_id=self.pad_id))
            graph.replay()
            return probs[:rows].cpu()  # the copy back waits for the replay

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return sorted(self._graphs)
