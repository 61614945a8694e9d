"""Sliding-window rate limits: per connection (messages, cancels) and per
client address (failed authentications)."""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque


class SlidingWindow:
    """At most ``limit`` events in any ``window_s`` seconds; limit 0 disables it.

    Only admitted events are recorded, so a client that keeps hammering past
    the limit is admitted again as soon as its oldest event leaves the window.
    """

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._events: deque[float] = deque()

    def _expire(self, now: float) -> None:
        horizon = now - self.window_s
        events = self._events
        while events and events[0] <= horizon:
            events.popleft()

    def retry_after_ms(self, now: float | None = None) -> int:
        """0 when an event would be admitted now, else milliseconds to wait
        (never more than the window)."""
        if self.limit == 0:
            return 0
        now = time.monotonic() if now is None else now
        self._expire(now)
        if len(self._events) < self.limit:
            return 0
        wait = self._events[0] + self.window_s - now
        return max(1, min(math.ceil(wait * 1000), math.ceil(self.window_s * 1000)))

    def admit(self, now: float | None = None) -> int:
        """Record an event and return 0, or return retry_after_ms and record nothing."""
        now = time.monotonic() if now is None else now
        wait = self.retry_after_ms(now)
        if wait == 0 and self.limit:
            self._events.append(now)
        return wait


class FailureThrottle:
    """Failed authentications per client address. Only failures are counted and
    only failing attempts are refused, so a valid key is never throttled; the
    table is bounded (oldest address forgotten first)."""

    def __init__(self, max_failures: int, window_s: float, max_addresses: int = 10_000) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_addresses = max_addresses
        self._by_address: OrderedDict[str, SlidingWindow] = OrderedDict()

    def retry_after_ms(self, address: str) -> int:
        window = self._by_address.get(address)
        return window.retry_after_ms() if window else 0

    def record_failure(self, address: str) -> None:
        window = self._by_address.get(address)
        if window is None:
            window = SlidingWindow(self.max_failures, self.window_s)
            self._by_address[address] = window
            while len(self._by_address) > self.max_addresses:
                self._by_address.popitem(last=False)
        else:
            self._by_address.move_to_end(address)
        window.admit()
