"""Authentication and admission checks for /ws and /status.

The key is read from ``X-API-Key``, else ``Authorization: Bearer``, else the
``api_key`` query parameter; the first source present is the only one checked,
so a bad header is never rescued by a good query key. Every accepted key is
compared in constant time (all of them, always). Failed attempts are throttled
per client address; successes are never throttled, so an attacker cannot lock
out a valid key, nor everyone behind one proxy.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
from collections.abc import Sequence
from typing import Literal
from urllib.parse import parse_qsl

import msgspec

from yap_core.limits import FailureThrottle
from yap_core.settings import CoreSettings, SettingsError

Verdict = Literal["ok", "bad_key", "throttled", "bad_origin"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AuthResult(msgspec.Struct, frozen=True):
    verdict: Verdict
    message: str = ""
    retry_after_ms: int = 0


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def presented_key(headers: Sequence[tuple[bytes, bytes]], query_string: bytes) -> str | None:
    """The key from the first source present: X-API-Key, Bearer, api_key query."""
    direct = _header(headers, b"x-api-key")
    if direct is not None:
        return direct.strip()
    authorization = _header(headers, b"authorization")
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() == "bearer":
            return token.strip()
    for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if name == "api_key":
            return value
    return None


def parse_networks(entries: Sequence[str], setting: str) -> tuple[Network, ...]:
    nets: list[Network] = []
    for entry in entries:
        try:
            nets.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise SettingsError(f"{setting}: {entry!r} is not an IP address or network") from None
    return tuple(nets)


class Authenticator:
    def __init__(self, settings: CoreSettings, workers: int = 1) -> None:
        self._keys = tuple(k.encode() for k in settings.text_api_key)
        self._origins = frozenset(o.rstrip("/") for o in settings.allowed_origins)
        self._proxies = parse_networks(settings.trusted_proxies, "TRUSTED_PROXIES")
        # Each of SERVER_WORKERS processes counts only the attempts the kernel
        # gave it (spread by address hash): each allows its share of the
        # failures, so one address gets AUTH_MAX_FAILURES in all, not N times it.
        self.throttle = FailureThrottle(math.ceil(settings.auth_max_failures / workers), settings.auth_failure_window_s)

    def key_is_valid(self, key: str | None) -> bool:
        if key is None:
            return False
        given = key.encode()
        ok = False
        for accepted in self._keys:  # no early exit: time does not depend on which key matched
            ok |= hmac.compare_digest(given, accepted)
        return ok

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self._proxies)

    def client_address(self, peer: str | None, headers: Sequence[tuple[bytes, bytes]]) -> str:
        """The peer, or when the peer is a trusted proxy, the nearest untrusted
        hop of X-Forwarded-For."""
        address = peer or "?"
        if not self._proxies or not self._trusted(address):
            return address
        forwarded = _header(headers, b"x-forwarded-for")
        if not forwarded:
            return address
        for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
            if not self._trusted(hop):
                return hop
        return address

    def origin_allowed(self, headers: Sequence[tuple[bytes, bytes]]) -> bool:
        if not self._origins:
            return True
        origin = _header(headers, b"origin")
        # Non-browser clients send no Origin; the allow-list guards browsers.
        return origin is None or origin.rstrip("/") in self._origins

    def authenticate(self, peer: str | None, headers: Sequence[tuple[bytes, bytes]], query_string: bytes) -> AuthResult:
        address = self.client_address(peer, headers)
        if self.key_is_valid(presented_key(headers, query_string)):
            if not self.origin_allowed(headers):
                return AuthResult("bad_origin", "Origin not allowed")
            return AuthResult("ok")
        wait = self.throttle.retry_after_ms(address)
        if wait:
            return AuthResult(
                "throttled",
                "missing or invalid API key; too many failures from this address, answers are slowed down",
                wait,
            )
        self.throttle.record_failure(address)
        return AuthResult("bad_key", "missing or invalid API key (X-API-Key, Authorization: Bearer, or api_key query)")
