//! Certificates for the TLS tests: a certificate authority of their own
//! (made with rcgen) and the server certificates it signs, and the server
//! side of TLS for the test receivers.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

/// A certificate authority made for one test.
pub struct TestCa {
    /// Its certificate (PEM): what a client is told to trust.
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A server certificate and its key (PEM).
pub struct ServerCertificate {
    pub certificate_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("a CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let certificate = params.self_signed(&key).expect("a self-signed CA");
        TestCa {
            pem: certificate.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `localhost` and 127.0.0.1, signed by this CA.
    pub fn server(&self) -> ServerCertificate {
        let key = KeyPair::generate().expect("a server key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_string()]).expect("server parameters");
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        let certificate = params
            .signed_by(&key, &self.issuer)
            .expect("a certificate signed by the test CA");
        ServerCertificate {
            certificate_pem: certificate.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// Accepts TLS connections with this certificate chain and key (PEM).
pub fn acceptor(certificate_pem: &str, key_pem: &str) -> TlsAcceptor {
    let chain = rustls_pemfile::certs(&mut certificate_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("PEM certificates");
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .expect("a PEM key")
        .expect("a private key in the PEM");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("a certificate and key that match");
    TlsAcceptor::from(Arc::new(config))
}
