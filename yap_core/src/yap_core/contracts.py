"""What a plugin must provide: engines, classifiers and quantizers.

Data that crosses the plugin boundary is a msgspec Struct; behaviour is a
typing.Protocol, so a third-party engine needs no base class from us, only the
shape. The conformance kit (`yap_core.testing`) checks the behaviour.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import msgspec

FinishReason = Literal["stop", "length", "abort", "error"]

# A progress callback: plugins report loading or building steps as short lines.
Progress = Callable[[str], None]


class Sampling(msgspec.Struct, frozen=True, kw_only=True):
    """Sampling for one request, already validated and filled with defaults."""

    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = -1  # -1: off
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    max_tokens: int = 150
    stop: tuple[str, ...] = ()
    # token id -> value added to its logit (banned phrases use large negatives)
    logit_bias: dict[int, float] = {}
    seed: int | None = None
    # Benchmarks only: generate exactly max_tokens.
    ignore_eos: bool = False


# Keys of Sampling an engine may declare it cannot honour (see Engine.unsupported_sampling).
SAMPLING_KEYS: frozenset[str] = frozenset(Sampling.__struct_fields__)


class GenerationRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One chat completion. The core renders and tokenizes the prompt (it needs
    the token count for budgets anyway), so engines receive token ids."""

    request_id: str
    prompt_token_ids: tuple[int, ...]
    sampling: Sampling = Sampling()


class Delta(msgspec.Struct, kw_only=True):
    """One streamed step. Counts are cumulative for the request so far."""

    text: str
    completion_tokens: int
    prompt_tokens: int
    cached_prompt_tokens: int = 0
    # Set on the last delta only: "stop" (EOS or a stop string), "length"
    # (max_tokens or context), "abort" (aborted inside the engine).
    finish_reason: FinishReason | None = None


class EngineStats(msgspec.Struct, kw_only=True):
    running: int  # requests decoding now
    waiting: int  # requests queued, not yet scheduled
    kv_cache_usage: float = 0.0  # 0..1 of the KV cache in use
    prefix_cache_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int = 0  # of those, tokens found


@runtime_checkable
class ChatTokenizer(Protocol):
    """The subset of a Hugging Face tokenizer the core uses; HF tokenizers
    satisfy it as they are."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...

    def apply_chat_template(self, conversation: Sequence[Mapping[str, str]], **kwargs: Any) -> Any: ...


@runtime_checkable
class Engine(Protocol):
    """A chat engine. `stream()` is the hot path; everything else is control.

    Contract (checked by the conformance kit):
    - `stream(request)` yields Deltas as tokens are produced; the last one has
      a finish_reason. Closing the iterator (``aclose``) or cancelling the task
      that iterates it aborts the request inside the engine.
    - `abort(request_id)` stops a running request; unknown ids are ignored.
    - After an abort, `stats().running` no longer counts the request.
    - `prefill(ids)` computes the prompt into the prefix cache and returns how
      many of its tokens were already cached.
    """

    name: str  # the plugin name, e.g. "hf"
    version: str  # version of the library doing the work (transformers, vllm, ...)
    model_id: str  # what was loaded (path or hub id)
    max_model_len: int  # context length in tokens, prompt + output

    @property
    def tokenizer(self) -> ChatTokenizer: ...

    # Sampling keys this engine cannot honour; the core reports them at
    # start-up and rejects requests that set them, instead of dropping them.
    def unsupported_sampling(self) -> frozenset[str]: ...

    async def start(self, progress: Progress | None = None) -> None: ...

    async def close(self) -> None: ...

    def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]: ...

    async def abort(self, request_id: str) -> None: ...

    async def prefill(self, prompt_token_ids: Sequence[int]) -> int: ...

    async def stats(self) -> EngineStats: ...


class EngineShare(Protocol):
    """One engine serving several server worker processes (SERVER_WORKERS > 1),
    as the supervisor process holds it.

    An engine that can be shared has two more methods than ``Engine``:
    ``share(workers) -> EngineShare``, called once in the supervisor before any
    worker starts (it launches the shared part, e.g. vLLM's engine core, and
    must not initialise a GPU in the supervisor), and ``attach(attachment)``,
    called on each worker's own engine object before its ``start()``. An
    engine without them cannot run with SERVER_WORKERS > 1 (a start-up error).
    """

    # One JSON-serialisable value per worker, in worker order: what that
    # worker's engine needs to reach the shared part (addresses, its index).
    attachments: list[Any]

    def wait_ready(self) -> None:
        """Block until the shared part serves (model loaded); raise if it failed."""
        ...

    def close(self) -> None:
        """Stop the shared part; called once, after every worker has exited."""
        ...


class Decision(msgspec.Struct, kw_only=True):
    screenshot: bool
    confidence: float  # probability of the decision taken, 0..1
    raw: dict[str, Any] = {}  # the classifier's own output (labels, scores)
    timed_out: bool = False


@runtime_checkable
class Classifier(Protocol):
    """Screenshot-intent classifier. `classify` takes the session's earlier
    user turns followed by the current utterance (last), and batches across
    sessions inside the plugin. A long session's oldest turns are forgotten:
    at least the newest TOOL_HISTORY_TOKENS user turns are always given (the
    window is that many tokens, and a turn is at least one)."""

    name: str
    model_id: str

    async def start(self, progress: Progress | None = None) -> None: ...

    async def close(self) -> None: ...

    async def classify(self, user_turns: Sequence[str]) -> Decision: ...


class BuildResult(msgspec.Struct, kw_only=True):
    out_dir: str
    format: str
    metadata_file: str
    reused: bool = False  # an existing build was found and kept


class CalibrationConfig(msgspec.Struct, kw_only=True):
    dataset: str | None = None  # local JSONL/text file; None: the plugin's bundled set
    num_samples: int = 128
    seq_len: int = 512
    batch_size: int = 1


@runtime_checkable
class Quantizer(Protocol):
    """Builds quantized checkpoints for one engine."""

    name: str  # e.g. "modelopt", "llmcompressor"
    engine: str  # the engine plugin that serves its output

    def formats(self, sm: tuple[int, int]) -> list[str]: ...

    def detect(self, checkpoint: Path) -> str | None: ...

    def build(
        self,
        model: str,
        fmt: str,
        out_dir: Path,
        *,
        calibration: CalibrationConfig,
        force: bool = False,
        progress: Progress | None = None,
    ) -> BuildResult: ...
