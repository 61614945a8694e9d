"""Hypercorn's access log without secrets: the ``api_key`` query parameter,
key-bearing headers and environment atoms never reach a log line."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

from hypercorn.logging import AccessLogAtoms, Logger

_SECRET_HEADERS = frozenset({b"x-api-key", b"authorization", b"cookie"})
REDACTED = "[redacted]"


def redact_query(query_string: bytes) -> bytes:
    if b"api_key" not in query_string:
        return query_string
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    return urlencode([(k, REDACTED if k == "api_key" else v) for k, v in pairs]).encode("latin-1")


class RedactingLogger(Logger):
    """Set as ``hypercorn.config.Config.logger_class``."""

    def atoms(self, request: Any, response: Any, request_time: float) -> Mapping[str, str]:
        scope = dict(request)
        scope["query_string"] = redact_query(request.get("query_string", b""))
        scope["headers"] = [
            (name, REDACTED.encode() if name.lower() in _SECRET_HEADERS else value)
            for name, value in request.get("headers", [])
        ]
        atoms = AccessLogAtoms(scope, response, request_time)  # type: ignore[arg-type]
        # AccessLogAtoms copies the whole environment ({name}e), TEXT_API_KEY included.
        for name in [k for k in atoms if k.endswith("}e")]:
            del atoms[name]
        return atoms
