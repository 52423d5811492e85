//! Nodes with ACLs on, for the benchmarks that compare them with ACLs off
//! (the `shoal-acl` targets of kv-bench and msg-bench, `log-bench --acl`):
//! the management token they start with, a token for the clients with a
//! policy of their own, as a service would have, and an HTTP client that
//! sends it (and trusts the nodes' CA with TLS on).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

/// The secret ACL-enabled bench nodes accept as their management token.
pub const MANAGEMENT_TOKEN: &str = "shoal_bench-management-token";

/// The flags that turn ACLs on, with [`MANAGEMENT_TOKEN`] written to a
/// file in `dir` for `--initial-management-token-file`.
pub fn acl_args(dir: &Path) -> anyhow::Result<Vec<String>> {
    let file = dir.join("management-token");
    std::fs::write(&file, MANAGEMENT_TOKEN)?;
    Ok(vec![
        "--acl".into(),
        "--initial-management-token-file".into(),
        file.display().to_string(),
    ])
}

/// A token for the bench's clients, as a service would have one: a policy
/// `name` with these `rules` (JSON), made with the management token on the
/// node at `api` (trusting `ca_pem` for https); its secret.
pub async fn issue_token(
    api: &str,
    name: &str,
    rules: serde_json::Value,
    ca_pem: Option<&[u8]>,
) -> anyhow::Result<String> {
    let mut admin = shoal_client::Client::builder()
        .endpoint(api)
        .token(MANAGEMENT_TOKEN);
    if let Some(pem) = ca_pem {
        admin = admin.ca_certificates_pem(pem);
    }
    let admin = admin.build()?;
    let policy = serde_json::json!({ "rules": rules });
    admin
        .request_json(
            shoal_client::Method::PUT,
            &format!("/v1/acl/policies/{name}"),
            &[],
            Some(&policy),
        )
        .await?;
    let token = admin
        .request_json(
            shoal_client::Method::POST,
            "/v1/acl/tokens",
            &[],
            Some(&serde_json::json!({ "policies": [name] })),
        )
        .await?;
    let secret = token["secret"]
        .as_str()
        .context("no secret in the answer")?;
    Ok(secret.to_string())
}

/// An HTTP client for a node's API: trusting only `ca_pem` when the API is
/// https, sending `token` as a bearer token when ACLs are on.
pub fn api_client(
    ca_pem: Option<&[u8]>,
    token: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))?,
        );
    }
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .default_headers(headers);
    if let Some(pem) = ca_pem {
        builder = builder
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(pem)?);
    }
    Ok(builder.build()?)
}
