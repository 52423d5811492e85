"""Export logs and spans to Shoal with the official OpenTelemetry Python SDK.

    otel_export.py (--http http://127.0.0.1:PORT | --grpc 127.0.0.1:PORT)
                   [--gzip] [--service NAME]

Over TLS (--http https://..., --grpc https://...), the exporters trust the CA
file named by OTEL_EXPORTER_OTLP_CERTIFICATE.

Emits, under the resource service.name NAME:
  * a SERVER span "handle-order" with the attribute order.id=42 and an ERROR
    status ("payment declined"), and inside it a CLIENT span "charge-card";
  * two log records inside those spans (so they carry the trace id):
    "order 42 placed" (INFO, attribute user=alice) inside "handle-order" and
    "card declined" (ERROR) inside "charge-card";
  * one WARN record "outside any span" after both spans ended.
Then flushes and prints one JSON line:
  {"trace_id": "<32 hex>", "root_span_id": "<16 hex>", "child_span_id": "<16 hex>",
   "spans_exported": N, "logs_exported": M}
and exits 1 (with the reason on stderr) if an export failed or a flush timed out.
Used by tests/tests/logs_shipping.rs.
"""

import argparse
import json
import logging
import sys

from opentelemetry import trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

try:  # opentelemetry-sdk >= 1.39 names them LogRecord*
    from opentelemetry.sdk._logs.export import LogRecordExporter as LogExporter
except ImportError:
    from opentelemetry.sdk._logs.export import LogExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode


class CountingSpanExporter(SpanExporter):
    """Delegates to the real exporter and remembers whether every export succeeded."""

    def __init__(self, inner):
        self.inner = inner
        self.exported = 0
        self.failures = 0

    def export(self, spans):
        result = self.inner.export(spans)
        if result.name == SpanExportResult.SUCCESS.name:
            self.exported += len(spans)
        else:
            self.failures += 1
        return result

    def shutdown(self):
        self.inner.shutdown()

    def force_flush(self, timeout_millis=30000):
        return self.inner.force_flush(timeout_millis)


class CountingLogExporter(LogExporter):
    def __init__(self, inner):
        self.inner = inner
        self.exported = 0
        self.failures = 0

    def export(self, batch):
        result = self.inner.export(batch)
        # Compared by name: the result enum was renamed across SDK versions.
        if result.name == "SUCCESS":
            self.exported += len(batch)
        else:
            self.failures += 1
        return result

    def shutdown(self):
        self.inner.shutdown()

    def force_flush(self, timeout_millis=30000):
        return True


def exporters(args):
    if args.http:
        from opentelemetry.exporter.otlp.proto.http import Compression
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        compression = Compression.Gzip if args.gzip else Compression.NoCompression
        base = args.http.rstrip("/")
        return (
            OTLPSpanExporter(endpoint=f"{base}/v1/traces", compression=compression, timeout=10),
            OTLPLogExporter(endpoint=f"{base}/v1/logs", compression=compression, timeout=10),
        )
    from grpc import Compression
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    compression = Compression.Gzip if args.gzip else Compression.NoCompression
    # An https:// address is TLS, verified against OTEL_EXPORTER_OTLP_CERTIFICATE.
    insecure = not args.grpc.startswith("https://")
    return (
        OTLPSpanExporter(endpoint=args.grpc, insecure=insecure, compression=compression, timeout=10),
        OTLPLogExporter(endpoint=args.grpc, insecure=insecure, compression=compression, timeout=10),
    )


def main():
    parser = argparse.ArgumentParser()
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--http", help="OTLP/HTTP base URL, e.g. http://127.0.0.1:4318")
    target.add_argument("--grpc", help="OTLP/gRPC address, e.g. 127.0.0.1:4317 (https://127.0.0.1:4317 for TLS)")
    parser.add_argument("--gzip", action="store_true")
    parser.add_argument("--service", default="otel-test")
    args = parser.parse_args()

    span_exporter, log_exporter = exporters(args)
    spans = CountingSpanExporter(span_exporter)
    logs = CountingLogExporter(log_exporter)
    resource = Resource.create({SERVICE_NAME: args.service, "deployment.environment": "test"})

    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(spans, schedule_delay_millis=100))
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(logs, schedule_delay_millis=100))

    # The standard logging module, bridged: records made inside a span carry its ids.
    log = logging.getLogger("shop")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(LoggingHandler(level=logging.NOTSET, logger_provider=logger_provider))
    # The Logs API directly.
    direct = logger_provider.get_logger("shop.direct")

    tracer = tracer_provider.get_tracer("shop")
    with tracer.start_as_current_span("handle-order", kind=SpanKind.SERVER) as root:
        root.set_attribute("order.id", 42)
        root.set_attribute("http.route", "/orders")
        log.info("order 42 placed", extra={"user": "alice"})
        with tracer.start_as_current_span("charge-card", kind=SpanKind.CLIENT) as child:
            child.set_attribute("card.kind", "visa")
            direct.emit(body="card declined", severity_number=SeverityNumber.ERROR, severity_text="ERROR")
        root.set_status(Status(StatusCode.ERROR, "payment declined"))
    log.warning("outside any span")

    flushed_logs = logger_provider.force_flush(15_000)
    flushed_spans = tracer_provider.force_flush(15_000)
    logger_provider.shutdown()
    tracer_provider.shutdown()

    print(json.dumps({
        "trace_id": format(root.get_span_context().trace_id, "032x"),
        "root_span_id": format(root.get_span_context().span_id, "016x"),
        "child_span_id": format(child.get_span_context().span_id, "016x"),
        "spans_exported": spans.exported,
        "logs_exported": logs.exported,
    }), flush=True)
    problems = []
    if not (flushed_logs and flushed_spans):
        problems.append(f"flush timed out (logs {flushed_logs}, spans {flushed_spans})")
    if spans.failures or logs.failures:
        problems.append(f"exports failed: {spans.failures} span batches, {logs.failures} log batches")
    if spans.exported != 2 or logs.exported != 3:
        problems.append(f"exported {spans.exported} spans and {logs.exported} log records, expected 2 and 3")
    if problems:
        print("otel_export: " + "; ".join(problems), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
