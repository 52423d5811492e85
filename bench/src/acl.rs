//! Nodes with ACLs on, for the benchmarks that compare them with ACLs off
//! (kv-bench's `shoal-acl` target, `log-bench --acl`): the management
//! token they start with, and a token for the clients with a policy of
//! their own, as a service would have.

use std::path::Path;

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
