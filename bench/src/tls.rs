//! TLS for the benchmarks' nodes: certificates made with `shoal tls`, as
//! an operator without a PKI would make them.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use anyhow::bail;

/// Makes a CA and a node certificate with `shoal tls` in `dir`; the flags
/// that turn TLS on with them (on the API, and with `between_nodes` mutual
/// TLS between nodes too), and the CA's PEM.
pub fn tls_args(
    bin: &Path,
    dir: &Path,
    between_nodes: bool,
) -> anyhow::Result<(Vec<String>, Vec<u8>)> {
    let certs = dir.join("certs");
    let dir_arg = certs.display().to_string();
    for args in [
        vec!["tls", "ca", "--dir", &dir_arg],
        vec!["tls", "cert", "node", "--dir", &dir_arg],
    ] {
        let output = Command::new(bin).args(&args).output()?;
        if !output.status.success() {
            bail!(
                "shoal {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    let path = |file: &str| certs.join(file).display().to_string();
    let mut args = vec![
        "--tls-cert".into(),
        path("node.pem"),
        "--tls-key".into(),
        path("node-key.pem"),
    ];
    if between_nodes {
        args.extend(["--tls-ca".into(), path("ca.pem")]);
    }
    Ok((args, std::fs::read(certs.join("ca.pem"))?))
}

/// A client configuration trusting the CA [`tls_args`] made in `dir`, for
/// clients that take a rustls configuration (WebSocket).
#[allow(dead_code)] // msg-bench only
pub fn client_config(dir: &Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let roots = shoal_tls::read_roots(&dir.join("certs").join("ca.pem"))?;
    Ok(Arc::new(shoal_tls::client_config(roots, None)?))
}
