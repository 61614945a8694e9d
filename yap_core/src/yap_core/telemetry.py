"""Telemetry: OpenTelemetry metrics and traces, optional Sentry.

The server holds one Telemetry per process (no global provider is installed:
the providers belong to this object) and calls these methods; they are cheap
and never raise. With ``OTEL_EXPORTER_OTLP_ENDPOINT`` unset no SDK object is
built at all and every method returns at once; with it set, metrics and spans
are exported over OTLP/HTTP from the SDK's own background threads, never from
the event loop. See docs/telemetry.md for the metric list.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from yap_core.settings import Config, CoreSettings

log = logging.getLogger(__name__)

PREFIX = "text_inference."

# Bucket edges in seconds: voice latencies live between 1 ms and a few seconds.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5,
                    0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)
_TOKEN_GAP_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1,
                      0.15, 0.25, 0.5, 1.0)
_CONNECTION_BUCKETS = (0.1, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
_TOKEN_COUNT_BUCKETS = (1, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


_SERVER_CANCEL_REASONS = frozenset({"barge_in", "disconnect", "timeout", "end"})


class Telemetry:
    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        engine: str = "",
        service: str = "yap",
        settings: CoreSettings | None = None,
        worker: int | None = None,
    ) -> None:
        """``settings`` wins; else the core settings are read from ``env``
        (default os.environ) and plugins.toml."""
        self.engine = engine
        self._worker = worker  # SERVER_WORKERS: this process's index
        cfg = settings if settings is not None else Config.discover(env).section("core", CoreSettings)
        self.enabled = bool(cfg.otel_exporter_otlp_endpoint)
        self._active_connections = 0
        self._active_generations = 0
        self._sentry: _SentryGate | None = None
        if cfg.sentry_dsn:
            self._sentry = _SentryGate(cfg.sentry_dsn, cfg.sentry_error_interval_s, engine)
        if self.enabled:
            self._build(cfg, engine, service if cfg.otel_service_name == "yap" else cfg.otel_service_name)

    # --- wiring --------------------------------------------------------------
    def _build(self, cfg: CoreSettings, engine: str, service: str) -> None:
        # Imported here so a deployment without telemetry never loads the SDK.
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        base = str(cfg.otel_exporter_otlp_endpoint).rstrip("/")
        attributes: dict[str, str | int] = {
            "service.name": service,
            "service.version": _version(),
            "yap.engine": engine,
            # One per process: with SERVER_WORKERS, several processes export the
            # same metric names, and a collector must not merge their series.
            "service.instance.id": f"{socket.gethostname()}-{os.getpid()}",
        }
        if self._worker is not None:
            attributes["yap.worker"] = self._worker
        resource = Resource.create(attributes)
        reader = PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=f"{base}/v1/metrics", timeout=5),
            export_interval_millis=cfg.otel_metric_export_interval,
            export_timeout_millis=5000,
        )
        self._meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
        self._tracer_provider = TracerProvider(resource=resource)
        self._tracer_provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{base}/v1/traces", timeout=5),
                               schedule_delay_millis=min(5000, cfg.otel_metric_export_interval))
        )
        self._tracer = self._tracer_provider.get_tracer("yap_core", _version())
        m = self._meter_provider.get_meter("yap_core", _version())

        def hist(name: str, unit: str, desc: str, buckets: tuple[float, ...]) -> Any:
            return m.create_histogram(PREFIX + name, unit=unit, description=desc,
                                      explicit_bucket_boundaries_advisory=buckets)

        self._ttft = hist("ttft", "s", "Time from a turn's request to its first token frame.", _LATENCY_BUCKETS)
        self._request_latency = hist("request_latency", "s", "Time from a turn's request to its end.", _LATENCY_BUCKETS)
        self._token_latency = hist("token_latency", "s", "Time between consecutive token frames.", _TOKEN_GAP_BUCKETS)
        self._connection_duration = hist("connection_duration", "s", "How long a WebSocket stayed open.", _CONNECTION_BUCKETS)
        self._semaphore_wait = hist("connection_semaphore_wait", "s", "Time a connection waited for its slot.", _LATENCY_BUCKETS)
        self._prompt_tokens = hist("prompt_tokens", "{token}", "Prompt tokens per turn.", _TOKEN_COUNT_BUCKETS)
        self._completion_tokens = hist("completion_tokens", "{token}", "Completion tokens per turn.", _TOKEN_COUNT_BUCKETS)
        self._startup = hist("startup_duration", "s", "Time from process start to ready.", _CONNECTION_BUCKETS)
        self._tool_latency = hist("tool_classification_latency", "s", "Classifier decision time.", _LATENCY_BUCKETS)

        self._requests = m.create_counter(PREFIX + "requests_total", description="Turns ended, by status.")
        self._tokens_total = m.create_counter(PREFIX + "tokens_generated_total", unit="{token}", description="Completion tokens generated.")
        self._prompt_total = m.create_counter(PREFIX + "prompt_tokens_total", unit="{token}", description="Prompt tokens processed.")
        self._rejected = m.create_counter(PREFIX + "connections_rejected_total", description="Sockets refused, by reason.")
        self._churn = m.create_counter(PREFIX + "session_churn_total", description="Sessions replaced or ended.")
        self._cancels = m.create_counter(PREFIX + "cancellation_total", description="Turns stopped early, by reason.")
        self._errors = m.create_counter(PREFIX + "errors_total", description="Error frames sent, by error.type.")
        self._timeouts = m.create_counter(PREFIX + "timeout_disconnects_total", description="Idle closes (4000).")
        self._rate_limits = m.create_counter(PREFIX + "rate_limit_violations_total", description="Frames over a rate limit, by kind.")
        self._tool_total = m.create_counter(PREFIX + "tool_classifications_total", description="Classifier decisions, by decision.")

        m.create_observable_gauge(PREFIX + "active_connections", callbacks=[self._observe_connections],
                                  description="Open WebSockets.")
        m.create_observable_gauge(PREFIX + "active_generations", callbacks=[self._observe_generations],
                                  description="Turns generating now.")
        gpu = _GpuProbe()
        m.create_observable_gauge(PREFIX + "gpu.memory_used", callbacks=[gpu.memory_used], unit="By",
                                  description="GPU memory in use, per device (none on CPU).")
        m.create_observable_gauge(PREFIX + "gpu.utilization", callbacks=[gpu.utilization], unit="%",
                                  description="GPU utilisation, per device (none on CPU).")

    def _observe_connections(self, _options: Any) -> Iterable[Any]:
        from opentelemetry.metrics import Observation

        return [Observation(self._active_connections)]

    def _observe_generations(self, _options: Any) -> Iterable[Any]:
        from opentelemetry.metrics import Observation

        return [Observation(self._active_generations)]

    # --- process -----------------------------------------------------------
    def startup(self, seconds: float) -> None:
        if self.enabled:
            self._startup.record(seconds)

    def shutdown(self) -> None:
        """Flush and stop the exporters (blocks up to ~10 s: use ``aclose`` from async code)."""
        if self._sentry is not None:
            self._sentry.close()
            self._sentry = None
        if not self.enabled:
            return
        self.enabled = False
        for provider in (self._tracer_provider, self._meter_provider):
            try:
                provider.shutdown()
            except Exception:  # exporting is best effort at exit
                log.warning("telemetry: exporter shutdown failed", exc_info=True)

    async def aclose(self) -> None:
        """``shutdown`` off the event loop."""
        await asyncio.to_thread(self.shutdown)

    def force_flush(self) -> None:
        """Export what is recorded now (blocking; tests and benchmarks)."""
        if self.enabled:
            self._tracer_provider.force_flush(5000)
            self._meter_provider.force_flush(5000)

    # --- connections -------------------------------------------------------
    def connection_opened(self) -> None:
        self._active_connections += 1

    def connection_closed(self, seconds: float) -> None:
        self._active_connections -= 1
        if self.enabled:
            self._connection_duration.record(seconds)

    def connection_rejected(self, reason: str) -> None:  # "auth", "capacity", "origin"
        if self.enabled:
            self._rejected.add(1, {"reason": reason})

    def semaphore_wait(self, seconds: float) -> None:
        if self.enabled:
            self._semaphore_wait.record(seconds)

    def session_churn(self) -> None:  # a session was replaced or ended
        if self.enabled:
            self._churn.add(1)

    def timeout_disconnect(self) -> None:  # idle close 4000
        if self.enabled:
            self._timeouts.add(1)

    def rate_limit_violation(self, kind: str) -> None:  # "message", "cancel", "auth"
        if self.enabled:
            self._rate_limits.add(1, {"kind": kind})

    # --- turns -------------------------------------------------------------
    def generation_started(self) -> None:
        self._active_generations += 1

    def generation_finished(
        self,
        status: str,  # "done", "cancelled", "error"
        *,
        ttft_s: float | None,
        total_s: float,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        self._active_generations -= 1
        if not self.enabled:
            return
        attrs = {"status": status}
        self._requests.add(1, attrs)
        self._request_latency.record(total_s, attrs)
        if ttft_s is not None:
            self._ttft.record(ttft_s)
        self._prompt_tokens.record(prompt_tokens)
        self._completion_tokens.record(completion_tokens)
        self._prompt_total.add(prompt_tokens)
        self._tokens_total.add(completion_tokens)

    def token(self, seconds_since_previous: float) -> None:
        if self.enabled:
            self._token_latency.record(seconds_since_previous)

    def cancellation(self, reason: str) -> None:
        """``reason``: the server's own (barge_in, disconnect, timeout, end) or a
        client's free text from its ``cancel`` frame, counted as "cancel" so
        that clients cannot grow the metric's label set."""
        if self.enabled:
            self._cancels.add(1, {"reason": reason if reason in _SERVER_CANCEL_REASONS else "cancel"})

    def error(self, error_type: str, exc: BaseException | None = None) -> None:
        """An error frame sent (``error_type``: its protocol code). An
        ``internal_error`` also goes to Sentry: as ``exc`` with its stack when
        the server caught one, else as a message."""
        if self.enabled:
            self._errors.add(1, {"error.type": error_type})
        if self._sentry is not None and error_type == "internal_error":
            if exc is not None:
                self._sentry.exception(exc)
            else:
                self._sentry.message(f"yap error frame: {error_type}", error_type)

    def tool_classification(self, seconds: float, decision: str) -> None:  # "yes", "no", "timeout", "error"
        if self.enabled:
            self._tool_latency.record(seconds, {"decision": decision})
            self._tool_total.add(1, {"decision": decision})

    def span(self, name: str, attributes: Mapping[str, Any] | None = None, *,
             parent: Any = None) -> contextlib.AbstractContextManager[Any]:
        """A trace span, current for what runs inside it: session -> request -> generation.
        ``parent``: a handle from ``session_opened`` (a request's session); else the
        current span is the parent. Yields the OpenTelemetry span, or None when off."""
        if not self.enabled:
            return contextlib.nullcontext()
        context = None
        if parent is not None:
            from opentelemetry import trace

            context = trace.set_span_in_context(parent)
        return self._tracer.start_as_current_span(name, context=context, attributes=self._attrs(attributes))

    def session_opened(self, session_id: str, attributes: Mapping[str, Any] | None = None) -> Any:
        """Start a session's span (it outlives any one ``with`` block); returns the
        handle to pass as ``parent=`` to its request spans and to ``session_closed``."""
        if not self.enabled:
            return None
        return self._tracer.start_span("session", attributes=self._attrs({"session_id": session_id, **(attributes or {})}))

    def session_closed(self, handle: Any, reason: str = "") -> None:
        if handle is not None:
            if reason:
                handle.set_attribute("yap.session.end_reason", reason)
            handle.end()

    def _attrs(self, attributes: Mapping[str, Any] | None) -> dict[str, Any]:
        attrs = {k: v for k, v in (attributes or {}).items() if v is not None}
        attrs.setdefault("yap.engine", self.engine)
        return attrs


# ---------------------------------------------------------------------------


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("yap-core")
    except PackageNotFoundError:
        return "0"


class _GpuProbe:
    """Per-device GPU memory and utilisation, read in the exporter's thread.

    NVML (nvidia-ml-py) is used when it initialises; else torch's own counters
    when torch is already loaded with CUDA initialised (never imported here, and
    never initialising CUDA in a process that has not). On CPU: no observations."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kind: str | None = None  # "nvml", "torch", "none"; decided on first read
        self._nvml: Any = None

    def _resolve(self) -> str:
        with self._lock:
            if self._kind is None:
                self._kind = self._detect()
            return self._kind

    def _detect(self) -> str:
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            return "nvml"
        except Exception:  # no driver, no library: not an error on a CPU box
            pass
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            return "torch"
        return "none"

    def _devices(self) -> list[tuple[int, int | None, int | None]]:
        """(index, memory used in bytes, utilisation %) per device."""
        kind = self._resolve()
        out: list[tuple[int, int | None, int | None]] = []
        try:
            if kind == "nvml":
                n = self._nvml
                for i in range(n.nvmlDeviceGetCount()):
                    h = n.nvmlDeviceGetHandleByIndex(i)
                    out.append((i, int(n.nvmlDeviceGetMemoryInfo(h).used), int(n.nvmlDeviceGetUtilizationRates(h).gpu)))
            elif kind == "torch":
                torch = sys.modules["torch"]
                for i in range(torch.cuda.device_count()):
                    free, total = torch.cuda.mem_get_info(i)
                    out.append((i, int(total - free), None))
        except Exception:
            log.warning("telemetry: GPU read failed", exc_info=True)
        return out

    def memory_used(self, _options: Any) -> Iterable[Any]:
        from opentelemetry.metrics import Observation

        return [Observation(used, {"gpu.device": i}) for i, used, _ in self._devices() if used is not None]

    def utilization(self, _options: Any) -> Iterable[Any]:
        from opentelemetry.metrics import Observation

        return [Observation(util, {"gpu.device": i}) for i, _, util in self._devices() if util is not None]


class _SentryGate:
    """Sentry, at most one event per error class per interval. The DSN is never logged."""

    def __init__(self, dsn: str, interval_s: float, engine: str) -> None:
        try:
            import sentry_sdk
        except ImportError:
            from yap_core.settings import SettingsError

            raise SettingsError("SENTRY_DSN is set but sentry-sdk is not installed: pip install 'yap-core[sentry]'") from None
        self._sdk = sentry_sdk
        self._interval = interval_s
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()
        self.sent = 0
        self.dropped = 0
        self._client = sentry_sdk.Client(dsn=dsn, default_integrations=False, before_send=self._gate,
                                         server_name="yap")
        self._scope = sentry_sdk.Scope(client=self._client)
        self._scope.set_tag("yap.engine", engine)

    def allow(self, key: str, now: Callable[[], float] = time.monotonic) -> bool:
        with self._lock:
            t = now()
            last = self._last.get(key)
            if last is not None and t - last < self._interval:
                self.dropped += 1
                return False
            self._last[key] = t
            self.sent += 1
            return True

    def _gate(self, event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any] | None:
        exc = hint.get("exc_info")
        key = exc[0].__name__ if exc else ",".join(event.get("fingerprint") or [str(event.get("message"))])
        return event if self.allow(key) else None

    def exception(self, exc: BaseException) -> None:
        try:
            from sentry_sdk.utils import event_from_exception

            event, hint = event_from_exception(exc, client_options=self._client.options)
            self._client.capture_event(event, hint, scope=self._scope)
        except Exception:
            log.warning("telemetry: Sentry capture failed", exc_info=False)

    def message(self, text: str, error_class: str) -> None:
        try:
            event = {"message": text, "level": "error", "fingerprint": [error_class]}
            self._client.capture_event(event, {}, scope=self._scope)
        except Exception:
            log.warning("telemetry: Sentry capture failed", exc_info=False)

    def close(self) -> None:
        self._client.close(timeout=2)
