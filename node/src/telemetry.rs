//! The node's own logs (console + rolling files), optional OTLP trace export,
//! and the Prometheus metrics recorder.

use anyhow::Context;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use rolling_file::{BasicRollingFileAppender, RollingConditionBasic};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::settings::Settings;

/// Keeps log writers and exporters alive; flushes them when dropped.
pub struct TelemetryGuard {
    _file: tracing_appender::non_blocking::WorkerGuard,
    tracer: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(tracer) = self.tracer.take() {
            let _ = tracer.shutdown();
        }
    }
}

/// Console and rolling-file logging for a node. Files roll daily and when
/// they reach the size limit; only the newest `log_max_files` are kept.
pub fn init_node(settings: &Settings) -> anyhow::Result<TelemetryGuard> {
    std::fs::create_dir_all(&settings.log_dir)
        .with_context(|| format!("creating {}", settings.log_dir.display()))?;
    let condition = RollingConditionBasic::new().daily().max_size(settings.log_max_file_bytes);
    let appender =
        BasicRollingFileAppender::new(settings.log_dir.join("shoal.log"), condition, settings.log_max_files)
            .with_context(|| format!("opening log file in {}", settings.log_dir.display()))?;
    let (file_writer, file_guard) = tracing_appender::non_blocking(appender);
    let filter = EnvFilter::try_new(&settings.log_level)
        .with_context(|| format!("bad --log-level {:?}", settings.log_level))?;

    let tracer = match &settings.otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .context("building the OTLP exporter")?;
            let resource = opentelemetry_sdk::Resource::builder().with_service_name("shoal").build();
            Some(
                opentelemetry_sdk::trace::SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource)
                    .build(),
            )
        }
        None => None,
    };
    let otel_layer = tracer.as_ref().map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("shoal")));

    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(tracing_subscriber::fmt::layer().with_ansi(false).with_writer(file_writer))
        .with(otel_layer)
        .try_init()
        .context("installing the log subscriber")?;
    Ok(TelemetryGuard { _file: file_guard, tracer })
}

/// Install the process-wide metrics recorder and return the handle that renders it.
pub fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    let buckets = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
    PrometheusBuilder::new()
        .set_buckets(&buckets)
        .context("metric buckets")?
        .install_recorder()
        .context("installing the metrics recorder")
}
