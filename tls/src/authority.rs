//! A certificate authority of one's own: `shoal tls ca` makes one, and
//! `shoal tls cert` signs node and client certificates with it.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::TlsError;

/// A certificate and its private key, PEM.
pub struct Issued {
    pub certificate_pem: String,
    pub key_pem: String,
}

/// What a certificate is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// A node: it serves (API, OTLP, RPC) and connects to its peers.
    Node,
    /// A client proving who it is to a node.
    Client,
}

fn issue_error(e: rcgen::Error) -> TlsError {
    TlsError::Issue(e.to_string())
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    // A little slack for clocks that are behind.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(i64::from(days));
}

/// A new certificate authority named `name`, valid for `days`.
pub fn new_authority(name: &str, days: u32) -> Result<Issued, TlsError> {
    let key = KeyPair::generate().map_err(issue_error)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(issue_error)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, days);
    let certificate = params.self_signed(&key).map_err(issue_error)?;
    Ok(Issued {
        certificate_pem: certificate.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A certificate for `name` and the `hosts` (DNS names or IP addresses)
/// it answers for, signed by the authority given as PEM.
pub fn issue(
    authority_certificate_pem: &str,
    authority_key_pem: &str,
    name: &str,
    hosts: &[String],
    usage: Usage,
    days: u32,
) -> Result<Issued, TlsError> {
    let authority_key = KeyPair::from_pem(authority_key_pem).map_err(issue_error)?;
    let issuer =
        Issuer::from_ca_cert_pem(authority_certificate_pem, authority_key).map_err(issue_error)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(issue_error)?;
    params.distinguished_name.push(DnType::CommonName, name);
    for host in hosts {
        let san = match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.clone().try_into().map_err(issue_error)?),
        };
        params.subject_alt_names.push(san);
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = match usage {
        Usage::Node => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days);
    let key = KeyPair::generate().map_err(issue_error)?;
    let certificate = params.signed_by(&key, &issuer).map_err(issue_error)?;
    Ok(Issued {
        certificate_pem: certificate.pem(),
        key_pem: key.serialize_pem(),
    })
}
