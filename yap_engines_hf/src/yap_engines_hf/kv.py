"""Key/value caches: one request's (unpadded) and the decode batch's (left-padded).

A request's KV is a list over layers of (keys, values), each shaped
[1, kv_heads, tokens, head_dim]. The batch keeps every running request as one
row of transformers' DynamicCache, left-padded to a common length; the
attention mask hides the pads and each row carries its own positions, so rows
of different lengths decode in one forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers.cache_utils import Cache, DynamicLayer

LayerKV = tuple[torch.Tensor, torch.Tensor]
RequestKV = list[LayerKV]


def make_cache(kv: RequestKV | None, num_layers: int) -> Cache:
    """A transformers Cache holding `kv` (or empty), without copying it."""
    layers = []
    for i in range(num_layers):
        layer = DynamicLayer()
        if kv is not None:
            keys, values = kv[i]
            layer.dtype, layer.device = keys.dtype, keys.device
            layer.keys, layer.values = keys, values
            layer.is_initialized = True
        layers.append(layer)
    return Cache(layers=layers)


def cache_kv(cache: Cache) -> RequestKV:
    return [(layer.keys, layer.values) for layer in cache.layers]


def slice_kv(kv: RequestKV, start: int, end: int) -> RequestKV:
    return [(k[:, :, start:end], v[:, :, start:end]) for k, v in kv]


def _pad_left(t: torch.Tensor, n: int) -> torch.Tensor:
    if n == 0:
        return t
    pad = t.new_zeros((t.shape[0], t.shape[1], n, t.shape[3]))
    return torch.cat([pad, t], dim=2)


class BatchKV:
    """The decode batch: rows of a DynamicCache, left-padded to one length."""

    def __init__(self, num_layers: int) -> None:
        self.num_layers = num_layers
        self.cache = make_cache(None, num_layers)
        self.pads: list[int] = []
        self.length = 0  # columns, pads included

    @property
    def rows(self) -> int:
        return len(self.pads)

    def row_len(self, row: int) -> int:
        return self.length - self.pads[row]

    def add(self, kv: RequestKV, tokens: int) -> None:
        """Append a request as the last row (copies its KV into the batch)."""
        if self.rows == 0:
            self.cache = make_cache(kv, self.num_layers)
            self.pads, self.length = [0], tokens
            return
        width = max(self.length, tokens)
        grow, own = width - self.length, width - tokens
        for layer, (k, v) in zip(self.cache.layers, kv, strict=True):
            layer.keys = torch.cat([_pad_left(layer.keys, grow), _pad_left(k, own)], dim=0)
            layer.values = torch.cat([_pad_left(layer.values, grow), _pad_left(v, own)], dim=0)
        self.pads = [p + grow for p in self.pads] + [own]
        self.length = width

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only `rows` (in that order); frees the others' KV."""
        if not rows:
            self.cache = make_cache(None, self.num_layers)
            self.pads, self.length = [], 0
            return
        index = torch.tensor(list(rows), dtype=torch.long, device=self.cache.layers[0].keys.device)
        pads = [self.pads[r] for r in rows]
        trim = min(pads)  # columns that are padding in every remaining row
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, trim:]
            layer.values = layer.values.index_select(0, index)[:, :, trim:]
        self.pads = [p - trim for p in pads]
        self.length -= trim

    def row_kv(self, row: int) -> RequestKV:
        """A copy of one row's KV without its padding."""
        start = self.pads[row]
        return [
            (layer.keys[row : row + 1, :, start:].clone(), layer.values[row : row + 1, :, start:].clone())
            for layer in self.cache.layers
        ]

    def step_inputs(self, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(position_ids [B,1], additive attention mask [B,1,1,length+1]) for one decode step."""
        pads = torch.tensor(self.pads, dtype=torch.long, device=device)
        positions = (self.length - pads).unsqueeze(1)
        cols = torch.arange(self.length + 1, device=device)
        hidden = cols.unsqueeze(0) < pads.unsqueeze(1)
        mask = torch.zeros(hidden.shape, dtype=dtype, device=device)
        mask.masked_fill_(hidden, torch.finfo(dtype).min)
        return positions, mask[:, None, None, :]

    def tokens(self) -> int:
        return sum(self.length - p for p in self.pads)
