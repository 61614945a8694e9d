"""Telemetry: the calls the server makes. (Interface fixed first; the
OpenTelemetry implementation lands with issue 7. Until then these record nothing.)

The server holds one Telemetry per process and calls these methods; they must
be cheap and never raise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any


class Telemetry:
    def __init__(self, env: Mapping[str, str] | None = None, *, engine: str = "", service: str = "yap") -> None:
        self.engine = engine

    # --- process -----------------------------------------------------------
    def startup(self, seconds: float) -> None: ...

    def shutdown(self) -> None: ...

    # --- connections -------------------------------------------------------
    def connection_opened(self) -> None: ...

    def connection_closed(self, seconds: float) -> None: ...

    def connection_rejected(self, reason: str) -> None: ...  # "auth", "capacity", "origin"

    def semaphore_wait(self, seconds: float) -> None: ...

    def session_churn(self) -> None: ...  # a session was replaced or ended

    def timeout_disconnect(self) -> None: ...  # idle close 4000

    def rate_limit_violation(self, kind: str) -> None: ...  # "message", "cancel", "auth"

    # --- turns -------------------------------------------------------------
    def generation_started(self) -> None: ...

    def generation_finished(
        self,
        status: str,  # "done", "cancelled", "error"
        *,
        ttft_s: float | None,
        total_s: float,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None: ...

    def token(self, seconds_since_previous: float) -> None: ...

    def cancellation(self, reason: str) -> None: ...  # "cancel", "barge_in", "disconnect", "timeout", "end"

    def error(self, error_type: str) -> None: ...  # the protocol error code

    def tool_classification(self, seconds: float, decision: str) -> None: ...  # "yes", "no", "timeout", "error"

    @contextlib.contextmanager
    def span(self, name: str, attributes: Mapping[str, Any] | None = None) -> Iterator[Any]:
        """A trace span: session -> request -> generation."""
        yield None
