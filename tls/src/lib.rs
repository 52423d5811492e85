//! TLS for the node's listeners and its peers (rustls with the
//! `aws-lc-rs` provider, TLS 1.2 and 1.3 only): certificates and keys read
//! from PEM files and swapped in when the files change
//! ([`ReloadingCertificate`]), the server and client configurations built
//! on them, TLS streams with their buffers ([`accept`], [`connect`]), and a
//! small certificate authority for `shoal tls ca|cert` ([`new_authority`],
//! [`issue`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

mod authority;
mod certificate;
mod stream;

pub use authority::{issue, new_authority, Issued, Usage};
pub use certificate::{CertificateFiles, ReloadingCertificate};
pub use rustls;
pub use stream::{accept, connect, ReadAhead};
pub use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Why certificates, keys or a TLS configuration could not be had.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key")]
    NoKey { path: PathBuf },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("the key in {key} does not belong to the certificate in {certificate}")]
    KeyMismatch { certificate: PathBuf, key: PathBuf },
    #[error("TLS configuration: {0}")]
    Config(String),
    #[error("making a certificate: {0}")]
    Issue(String),
}

/// The one cryptography provider everything here uses: aws-lc-rs's (its
/// AES-GCM is twice ring's speed on CPUs with VAES), with the AES-128-GCM
/// suites ahead of AES-256-GCM (as Go's TLS, and so NATS, order them).
/// Both are safe; AES-128 is cheaper per byte, which is most of what TLS
/// costs on a busy stream.
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| !is_aes_128(suite.suite()));
    Arc::new(provider)
}

fn is_aes_128(suite: rustls::CipherSuite) -> bool {
    use rustls::CipherSuite as Suite;
    matches!(
        suite,
        Suite::TLS13_AES_128_GCM_SHA256
            | Suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | Suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    )
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The certificates in a PEM file, in order (a chain starts with its leaf).
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certificates = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid {
            path: path.to_path_buf(),
            reason: format!("not PEM: {e}"),
        })?;
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certificates)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| TlsError::Invalid {
            path: path.to_path_buf(),
            reason: format!("not PEM: {e}"),
        })?
        .ok_or_else(|| TlsError::NoKey {
            path: path.to_path_buf(),
        })
}

/// The certificate authorities in a PEM file, as trust roots.
pub fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in read_certificates(path)? {
        roots.add(certificate).map_err(|e| TlsError::Invalid {
            path: path.to_path_buf(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// A server configuration presenting `certificate` (whatever it holds at
/// each handshake) and offering `alpn` protocols; with `client_roots`,
/// a client must present a certificate those roots signed.
pub fn server_config(
    certificate: Arc<ReloadingCertificate>,
    client_roots: Option<RootCertStore>,
    alpn: &[&[u8]],
) -> Result<ServerConfig, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match client_roots {
        Some(roots) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(certificate);
    // The server's order of suites wins, so clients that prefer AES-256
    // (OpenSSL, curl) get the cheaper AES-128 too.
    config.ignore_client_order = true;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A client configuration that trusts `roots` and, with `certificate`,
/// presents it when the server asks for one.
pub fn client_config(
    roots: RootCertStore,
    certificate: Option<Arc<ReloadingCertificate>>,
) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots);
    Ok(match certificate {
        Some(certificate) => builder.with_client_cert_resolver(certificate),
        None => builder.with_no_client_auth(),
    })
}
