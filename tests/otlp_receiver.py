"""A real OTLP/HTTP receiver on loopback for tests: decodes the protobuf bodies
that OpenTelemetry exporters POST to /v1/metrics and /v1/traces."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class OtlpReceiver:
    """Collects metric points and spans; ``url`` is the base endpoint."""

    def __init__(self) -> None:
        self.metrics: list[ExportMetricsServiceRequest] = []
        self.traces: list[ExportTraceServiceRequest] = []
        self.paths: list[str] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                with receiver._lock:
                    receiver.paths.append(self.path)
                    if self.path == "/v1/metrics":
                        receiver.metrics.append(ExportMetricsServiceRequest.FromString(body))
                        reply = ExportMetricsServiceResponse().SerializeToString()
                    elif self.path == "/v1/traces":
                        receiver.traces.append(ExportTraceServiceRequest.FromString(body))
                        reply = ExportTraceServiceResponse().SerializeToString()
                    else:
                        self.send_response(404)
                        self.end_headers()
                        return
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- decoded views ---------------------------------------------------------
    def metric_points(self) -> dict[str, list[tuple[dict[str, Any], float]]]:
        """metric name -> [(attributes, value)], value = sum, count or gauge value."""
        out: dict[str, list[tuple[dict[str, Any], float]]] = {}
        with self._lock:
            requests = list(self.metrics)
        for req in requests:
            for rm in req.resource_metrics:
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        kind = m.WhichOneof("data")
                        for p in getattr(m, kind).data_points:
                            attrs = {a.key: _value(a.value) for a in p.attributes}
                            if kind == "histogram":
                                value = float(p.count)
                            else:
                                value = float(p.as_double if p.WhichOneof("value") == "as_double" else p.as_int)
                            out.setdefault(m.name, []).append((attrs, value))
        return out

    def resource_attributes(self) -> dict[str, Any]:
        with self._lock:
            for req in self.metrics:
                for rm in req.resource_metrics:
                    return {a.key: _value(a.value) for a in rm.resource.attributes}
        return {}

    def spans(self) -> list[dict[str, Any]]:
        out = []
        with self._lock:
            requests = list(self.traces)
        for req in requests:
            for rs in req.resource_spans:
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        out.append({
                            "name": s.name,
                            "span_id": s.span_id.hex(),
                            "parent_id": s.parent_span_id.hex(),
                            "trace_id": s.trace_id.hex(),
                            "attributes": {a.key: _value(a.value) for a in s.attributes},
                        })
        return out

    def wait_for(self, ready: Callable[[OtlpReceiver], bool], timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready(self):
                return True
            time.sleep(0.1)
        return ready(self)
