"""Forward passes: prefill one prompt, decode one step of the batch.

We call the model's forward ourselves (not `generate`): one call per step for
every running request, with the logits of the last position only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from yap_engines_hf.kv import BatchKV, RequestKV, cache_kv, make_cache


class ModelRunner:
    def __init__(self, model: torch.nn.Module, num_layers: int, decode_threads: int = 0) -> None:
        self.model = model
        self.num_layers = num_layers
        # torch's thread count is per process; only this runner's thread does torch work
        self._prefill_threads = torch.get_num_threads()
        self._decode_threads = decode_threads or self._prefill_threads
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self._head32 = _float32_head(model) if self.dtype != torch.float32 else None

    def _threads(self, n: int) -> None:
        if self.device.type == "cpu" and torch.get_num_threads() != n:
            torch.set_num_threads(n)

    def _forward(self, **inputs: object) -> torch.Tensor:
        """Logits of the last position of each row, in float32: [rows, vocab].

        In bf16 the logits themselves round to steps of 1/16 or coarser, which
        makes near-ties of greedy decoding and the sampling filters arbitrary;
        the body runs in the model's dtype and only the head in float32."""
        if self._head32 is None:
            return self.model(**inputs, logits_to_keep=1).logits[:, -1].float()
        hidden = self.model.base_model(**inputs).last_hidden_state[:, -1]
        weight, bias = self._head32
        return torch.nn.functional.linear(hidden.float(), weight, bias)

    def prefill(self, ids: Sequence[int], cached: int, prefix: RequestKV | None) -> tuple[torch.Tensor, RequestKV]:
        """Compute ids[cached:] on top of `prefix` (the KV of ids[:cached]).

        Returns the logits at the last position ([vocab]) and the KV of all ids."""
        self._threads(self._prefill_threads)
        new = torch.tensor([list(ids[cached:])], dtype=torch.long, device=self.device)
        cache = make_cache(prefix if cached else None, self.num_layers)
        positions = mask = None
        if cached:
            # causal over the new tokens, everything cached visible
            q, total = new.shape[1], len(ids)
            positions = torch.arange(cached, total, device=self.device).unsqueeze(0)
            rows = torch.arange(q, device=self.device).unsqueeze(1) + cached
            cols = torch.arange(total, device=self.device).unsqueeze(0)
            mask = torch.zeros((q, total), dtype=self.dtype, device=self.device)
            mask.masked_fill_(cols > rows, torch.finfo(self.dtype).min)
            mask = mask[None, None]
        logits = self._forward(
            input_ids=new, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True
        )
        return logits[0], cache_kv(cache)

    def decode(self, batch: BatchKV, last_tokens: Sequence[int]) -> torch.Tensor:
        """One step for every row: feeds each row's last token, returns logits [rows, vocab]."""
        self._threads(self._decode_threads)
        ids = torch.tensor(list(last_tokens), dtype=torch.long, device=self.device).unsqueeze(1)
        positions, mask = batch.step_inputs(self.dtype, self.device)
        logits = self._forward(
            input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=batch.cache, use_cache=True
        )
        batch.length += 1
        return logits


def _float32_head(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """A float32 copy of a plain linear LM head, or None where the model does more
    to its logits (soft-capping, scaling) and must compute them itself."""
    head = model.get_output_embeddings()
    config = model.config
    if (
        type(head) is not torch.nn.Linear
        or model.base_model is model
        or getattr(config, "final_logit_softcapping", None)
        or getattr(config, "logit_scale", None) is not None
    ):
        return None
    bias = head.bias.detach().float() if head.bias is not None else None
    return head.weight.detach().float(), bias
