//! `shoal tls ca|cert`: a certificate authority and the certificates it
//! signs, for clusters without a PKI of their own (files that exist are
//! used as they are: these commands are only a convenience).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;
use shoal_tls::{issue, new_authority, Issued, Usage};

#[derive(Subcommand, Debug)]
pub enum TlsCommand {
    /// Create a certificate authority: DIR/ca.pem (give it to nodes as --tls-ca and to
    /// clients as --cacert) and DIR/ca-key.pem (keep it private: it signs certificates).
    Ca {
        /// Directory to write the files in.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The authority's name (its certificate's common name).
        #[arg(long, default_value = "Shoal CA")]
        name: String,
        /// Days the authority is valid.
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// Replace files that exist.
        #[arg(long)]
        force: bool,
    },
    /// Create a certificate signed by the authority in --dir: DIR/NAME.pem and
    /// DIR/NAME-key.pem (for a node: --tls-cert and --tls-key). A node's certificate
    /// serves and connects (server and client use); --client makes one that only connects.
    Cert {
        /// Name of the node or client (the certificate's common name, and the files' names).
        name: String,
        /// A DNS name or IP address clients reach the node by (repeat, or comma-separate)
        /// [default: localhost,127.0.0.1].
        #[arg(long = "host", value_delimiter = ',')]
        hosts: Vec<String>,
        /// A client certificate (client use only, no hosts).
        #[arg(long)]
        client: bool,
        /// Directory holding ca.pem and ca-key.pem, where the files are written.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 825)]
        days: u32,
        /// Replace files that exist.
        #[arg(long)]
        force: bool,
    },
}

pub fn run(command: TlsCommand) -> anyhow::Result<()> {
    match command {
        TlsCommand::Ca {
            dir,
            name,
            days,
            force,
        } => {
            let authority = new_authority(&name, days)?;
            write_pair(&dir, "ca", &authority, force)?;
            println!(
                "Give {} to nodes (--tls-ca) and clients (--cacert); keep {} private.",
                dir.join("ca.pem").display(),
                dir.join("ca-key.pem").display()
            );
            Ok(())
        }
        TlsCommand::Cert {
            name,
            hosts,
            client,
            dir,
            days,
            force,
        } => {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                || name.starts_with('.')
            {
                bail!("NAME must be letters, digits, '-', '_' or '.' (it names the files)");
            }
            if client && !hosts.is_empty() {
                bail!("a --client certificate has no --host");
            }
            let hosts = if hosts.is_empty() && !client {
                vec!["localhost".to_string(), "127.0.0.1".to_string()]
            } else {
                hosts
            };
            let read = |file: &str| {
                let path = dir.join(file);
                std::fs::read_to_string(&path).with_context(|| {
                    format!(
                        "reading {} (make the authority first: shoal tls ca --dir {})",
                        path.display(),
                        dir.display()
                    )
                })
            };
            let usage = if client { Usage::Client } else { Usage::Node };
            let issued = issue(
                &read("ca.pem")?,
                &read("ca-key.pem")?,
                &name,
                &hosts,
                usage,
                days,
            )?;
            write_pair(&dir, &name, &issued, force)?;
            if !client {
                println!("Valid for: {}", hosts.join(", "));
            }
            Ok(())
        }
    }
}

/// Writes DIR/NAME.pem and DIR/NAME-key.pem (readable by its owner only).
fn write_pair(dir: &Path, name: &str, issued: &Issued, force: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let certificate = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}-key.pem"));
    if !force {
        for path in [&certificate, &key] {
            if path.exists() {
                bail!("{} exists (--force replaces it)", path.display());
            }
        }
    }
    write_file(&key, &issued.key_pem, 0o600)?;
    write_file(&certificate, &issued.certificate_pem, 0o644)?;
    println!("Wrote {} and {}", certificate.display(), key.display());
    Ok(())
}

fn write_file(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    // Written next to the target and renamed over it, so a node watching
    // the file never reads half of it.
    let partial = path.with_extension("pem.partial");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&partial)
        .with_context(|| format!("writing {}", partial.display()))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("writing {}", path.display()))
}
