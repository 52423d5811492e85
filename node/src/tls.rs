//! The node's TLS (`--tls-cert`, `--tls-key`, `--tls-ca`): the acceptor its
//! HTTP listeners share, mutual TLS with its peers over RPC, the client it
//! calls its peers' APIs with, and the reload of its certificate on SIGHUP
//! or when the files change.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shoal_tls::{ReloadingCertificate, TlsAcceptor, TlsConnector};
use shoal_transport::PeerTls;

use crate::settings::Settings;

/// How often the certificate files are looked at for changes.
const CHANGE_CHECK_EVERY: Duration = Duration::from_secs(2);

/// What the node serves TLS with.
pub struct NodeTls {
    pub certificate: Arc<ReloadingCertificate>,
    /// For the API and both OTLP receivers: HTTP/2 and HTTP/1.1 by ALPN.
    pub acceptor: TlsAcceptor,
}

/// Reads the certificate and key when `--tls-cert` is set.
pub fn load(settings: &Settings) -> anyhow::Result<Option<NodeTls>> {
    let Some(files) = &settings.tls else {
        return Ok(None);
    };
    let certificate = ReloadingCertificate::load(files.clone()).context("--tls-cert/--tls-key")?;
    let config = shoal_tls::server_config(certificate.clone(), None, &[b"h2", b"http/1.1"])?;
    record_expiry(&certificate);
    Ok(Some(NodeTls {
        certificate,
        acceptor: TlsAcceptor::from(Arc::new(config)),
    }))
}

/// Mutual TLS on the RPC listener and to peers, with `--tls-ca`: this
/// node's certificate both ways, the CA checking the peer's.
pub fn peer_tls(settings: &Settings, tls: Option<&NodeTls>) -> anyhow::Result<Option<PeerTls>> {
    let Some(tls) = tls else {
        return Ok(None);
    };
    let Some(ca) = &settings.tls_ca else {
        tracing::warn!("without --tls-ca, node-to-node RPC is not encrypted (only the cluster secret guards it)");
        return Ok(None);
    };
    let roots = shoal_tls::read_roots(ca).context("--tls-ca")?;
    let server = shoal_tls::server_config(tls.certificate.clone(), Some(roots.clone()), &[])?;
    let client = shoal_tls::client_config(roots, Some(tls.certificate.clone()))?;
    Ok(Some(PeerTls {
        acceptor: TlsAcceptor::from(Arc::new(server)),
        connector: TlsConnector::from(Arc::new(client)),
    }))
}

/// The client for peers' APIs: it trusts `--tls-ca` besides the system's roots.
pub fn peer_http_client(settings: &Settings) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().no_proxy();
    if let Some(path) = &settings.tls_ca {
        let pem =
            std::fs::read(path).with_context(|| format!("reading --tls-ca {}", path.display()))?;
        for certificate in reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("--tls-ca {} is not PEM", path.display()))?
        {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder
        .build()
        .context("building the HTTP client for peers")
}

fn record_expiry(certificate: &ReloadingCertificate) {
    if let Some(not_after) = certificate.not_after() {
        metrics::gauge!("shoal_tls_certificate_expiry_timestamp_seconds").set(not_after as f64);
    }
}

/// Reads the certificate files again on SIGHUP and whenever they change;
/// a pair that does not load is reported and the one in use stays.
pub fn spawn_reloader(certificate: Arc<ReloadingCertificate>) {
    tokio::spawn(async move {
        let mut hangups = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::hangup(),
        ) {
            Ok(signal) => Some(signal),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; certificates reload only when their files change");
                None
            }
        };
        loop {
            let hangup = tokio::select! {
                Some(()) = async { hangups.as_mut()?.recv().await } => true,
                _ = tokio::time::sleep(CHANGE_CHECK_EVERY) => false,
            };
            if !hangup && !certificate.changed_on_disk() {
                continue;
            }
            let files = certificate.files();
            match certificate.reload() {
                Ok(()) => {
                    metrics::counter!("shoal_tls_reloads_total", "result" => "ok").increment(1);
                    record_expiry(&certificate);
                    tracing::info!(certificate = %files.certificate.display(), "TLS certificate reloaded");
                }
                Err(e) => {
                    metrics::counter!("shoal_tls_reloads_total", "result" => "error").increment(1);
                    tracing::error!(error = %e, "TLS certificate not reloaded; the previous one stays in use");
                }
            }
        }
    });
}
