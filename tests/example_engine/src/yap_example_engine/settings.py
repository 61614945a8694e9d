"""Settings of the example engine: section [example] of plugins.toml, or env vars."""

from __future__ import annotations

from typing import Annotated

import msgspec
from yap_core.settings import doc


class ExampleSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    example_step_ms: Annotated[float, doc("Pause before each token, in ms (simulates model time).", ge=0, le=1000)] = 2.0
    example_prefix_entries: Annotated[int, doc("Prompts remembered for cached_prompt_tokens.", ge=1)] = 64
