//! The HTTP client for users' URLs, with the policy applied at every step
//! that can change where a request goes.

use std::error::Error;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::{Method, RequestBuilder, Url};

use crate::policy::{Policy, Refusal};

/// Most redirects one request follows.
const MAX_REDIRECTS: usize = 10;
/// Longest a definition's check waits for DNS before letting the URL pass
/// (the request itself is checked again when it connects).
const CHECK_RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// The one client for requests to users' URLs. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Outbound {
    client: reqwest::Client,
    policy: Arc<Policy>,
}

/// Why the client cannot be built (the node does not start).
#[derive(thiserror::Error, Debug)]
pub enum ClientError {
    #[error("reading --outbound-ca-file {path}: {source}")]
    ReadCa {
        path: String,
        source: std::io::Error,
    },
    #[error("--outbound-ca-file {path}: not PEM certificates")]
    NotPem { path: String },
    #[error("--outbound-ca-file {path} holds no certificate")]
    NoCertificate { path: String },
    #[error("building the HTTP client for webhooks and workflow calls: {0}")]
    Build(reqwest::Error),
}

/// Why a URL may not be requested.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum OutboundError {
    #[error("{url:?} is not an absolute URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("{url:?} is not an http:// or https:// URL")]
    Scheme { url: String },
    #[error(transparent)]
    Refused(#[from] Refusal),
}

impl Outbound {
    /// HTTPS is verified against the system's roots and, when given, the
    /// CA certificates of `ca_file` (PEM). Proxies from the environment
    /// are not used: a proxy would resolve and connect where the policy
    /// cannot see.
    pub fn new(policy: Policy, ca_file: Option<&Path>) -> Result<Outbound, ClientError> {
        let policy = Arc::new(policy);
        let redirects = {
            let policy = policy.clone();
            reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= MAX_REDIRECTS {
                    return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
                }
                match policy.check_host(attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(refusal) => attempt.error(refusal),
                }
            })
        };
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(redirects)
            .dns_resolver(Arc::new(CheckedResolver {
                policy: policy.clone(),
            }));
        if let Some(path) = ca_file {
            let shown = path.display().to_string();
            let pem = std::fs::read(path).map_err(|source| ClientError::ReadCa {
                path: shown.clone(),
                source,
            })?;
            let certificates =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|_| ClientError::NotPem {
                    path: shown.clone(),
                })?;
            if certificates.is_empty() {
                return Err(ClientError::NoCertificate { path: shown });
            }
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let client = builder.build().map_err(ClientError::Build)?;
        Ok(Outbound { client, policy })
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// A request to a user's URL. An address in the URL is checked here;
    /// the addresses a name resolves to, and redirects, when it is sent.
    pub fn request(&self, method: Method, url: &str) -> Result<RequestBuilder, OutboundError> {
        let url = parse(url)?;
        self.policy.check_host(&url)?;
        Ok(self.client.request(method, url))
    }

    /// The check of a URL written into a definition (a webhook, a
    /// workflow's call): its host, and the addresses its name resolves to
    /// if DNS answers within 2 s, refused when every one of them is. A name
    /// that does not resolve yet passes; each request is checked again.
    pub async fn check_destination(&self, url: &str) -> Result<(), OutboundError> {
        self.check_host_of(&parse(url)?).await
    }

    /// The same check for a URL of another protocol (a database's): its
    /// host and what the name resolves to. Connections made by the
    /// database driver resolve on their own; this is the definition-time
    /// check.
    pub async fn check_host_of(&self, parsed: &Url) -> Result<(), OutboundError> {
        self.policy.check_host(parsed)?;
        let Some(url::Host::Domain(name)) = parsed.host() else {
            return Ok(());
        };
        if self.policy.allows_host(name) {
            return Ok(());
        }
        let lookup = tokio::net::lookup_host((name, 0));
        let Ok(Ok(addresses)) = tokio::time::timeout(CHECK_RESOLVE_TIMEOUT, lookup).await else {
            return Ok(());
        };
        let addresses: Vec<SocketAddr> = addresses.collect();
        match permitted(&self.policy, name, addresses) {
            Ok(_) => Ok(()),
            Err(refusal) => Err(refusal.into()),
        }
    }
}

fn parse(url: &str) -> Result<Url, OutboundError> {
    let parsed = Url::parse(url).map_err(|e| OutboundError::BadUrl {
        url: url.to_string(),
        reason: e.to_string(),
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(OutboundError::Scheme {
            url: url.to_string(),
        });
    }
    Ok(parsed)
}

/// The addresses of `name` that the policy permits; a refusal when there
/// are addresses and none is permitted.
fn permitted(
    policy: &Policy,
    name: &str,
    addresses: Vec<SocketAddr>,
) -> Result<Vec<SocketAddr>, Refusal> {
    let mut refusal = None;
    let allowed: Vec<SocketAddr> = addresses
        .into_iter()
        .filter(|address| match policy.check_address(address.ip()) {
            Ok(()) => true,
            Err(refused) => {
                refusal.get_or_insert(refused);
                false
            }
        })
        .collect();
    match refusal {
        Some(refused) if allowed.is_empty() => Err(Refusal {
            destination: format!("{name} ({})", refused.destination),
            class: refused.class,
        }),
        _ => Ok(allowed),
    }
}

/// Resolves names as the system does and keeps only the addresses the
/// policy permits, so a name cannot lead a request where an address
/// could not (DNS rebinding included: every connection resolves anew).
struct CheckedResolver {
    policy: Arc<Policy>,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addresses: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let addresses = if policy.allows_host(&host) {
                addresses
            } else {
                permitted(&policy, &host, addresses)?
            };
            let addresses: Addrs = Box::new(addresses.into_iter());
            Ok(addresses)
        })
    }
}

/// The policy's refusal that stopped a request (at DNS or on a redirect).
pub fn refusal(error: &reqwest::Error) -> Option<&Refusal> {
    let mut source: Option<&(dyn Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(refusal) = current.downcast_ref::<Refusal>() {
            return Some(refusal);
        }
        source = current.source();
    }
    None
}

/// What a failed request tells the user who supplied its URL: the policy's
/// refusal, or only whether it timed out or could not connect. Lower
/// layers' detail (refused or filtered port, TLS alert) stays out, so the
/// node cannot serve as a port scanner.
pub fn failure(error: &reqwest::Error) -> String {
    if let Some(refusal) = refusal(error) {
        return refusal.to_string();
    }
    let text = if error.is_timeout() {
        "timed out"
    } else if error.is_redirect() {
        "too many redirects"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    text.to_string()
}
