//! Compatibility with other systems' wire formats, so their unmodified
//! clients work against Shoal: the OpenTelemetry (OTLP) receiver on its own
//! listeners, Elasticsearch `_bulk` ingest, and the Jaeger query API. Each
//! adapter translates to and from the log service and reuses the API
//! layer's plumbing (`ApiError`, extractors, log request helpers). Nothing
//! below the HTTP layer may depend on it (services, `cluster/`), nor may
//! `api/`.

pub mod elastic;
pub mod jaeger;
pub mod otlp;
