"""A byte-level tokenizer: ids 0..255 are UTF-8 bytes, 256 is end-of-text."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

EOS = 256
VOCAB = 257


class ByteTokenizer:
    eos_token_id = EOS

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        data = bytes(i for i in token_ids if 0 <= i < 256)
        return data.decode("utf-8", errors="replace")

    def apply_chat_template(self, conversation: Sequence[Mapping[str, str]], **kwargs: Any) -> Any:
        text = "".join(f"{m['role']}: {m['content']}\n" for m in conversation)
        if kwargs.get("add_generation_prompt"):
            text += "assistant:"
        return self.encode(text) if kwargs.get("tokenize", True) else text
