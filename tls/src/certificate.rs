//! A certificate and key read from PEM files, swapped for the files' new
//! contents on [`ReloadingCertificate::reload`]: handshakes started after
//! a reload present the new certificate, connections already open keep
//! theirs, and files that fail to load leave the old certificate in use.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

use crate::{provider, read_certificates, read_private_key, TlsError};

/// Where a certificate chain (leaf first) and its private key are.
#[derive(Clone, Debug)]
pub struct CertificateFiles {
    pub certificate: PathBuf,
    pub key: PathBuf,
}

/// What the files looked like when they were last read: their modification
/// times and sizes.
type Stamp = Option<[(SystemTime, u64); 2]>;

fn stamp(files: &CertificateFiles) -> Stamp {
    let of = |path: &Path| {
        let metadata = std::fs::metadata(path).ok()?;
        Some((metadata.modified().ok()?, metadata.len()))
    };
    Some([of(&files.certificate)?, of(&files.key)?])
}

#[derive(Debug)]
pub struct ReloadingCertificate {
    files: CertificateFiles,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' stamp at the last attempt to read them.
    read_at: Mutex<Stamp>,
}

impl ReloadingCertificate {
    /// Reads the files; an error names the file and what is wrong with it.
    pub fn load(files: CertificateFiles) -> Result<Arc<ReloadingCertificate>, TlsError> {
        let read_at = stamp(&files);
        let key = certified_key(&files)?;
        Ok(Arc::new(ReloadingCertificate {
            files,
            current: RwLock::new(Arc::new(key)),
            read_at: Mutex::new(read_at),
        }))
    }

    pub fn files(&self) -> &CertificateFiles {
        &self.files
    }

    /// Whether either file changed (time or size) since it was last read.
    pub fn changed_on_disk(&self) -> bool {
        let read_at = self.read_at.lock().unwrap_or_else(|e| e.into_inner());
        *read_at != stamp(&self.files)
    }

    /// Reads the files again and uses what they hold from the next
    /// handshake on; on an error the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        *self.read_at.lock().unwrap_or_else(|e| e.into_inner()) = stamp(&self.files);
        let key = certified_key(&self.files)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        Ok(())
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// When the certificate in use expires, in seconds since the Unix epoch.
    pub fn not_after(&self) -> Option<i64> {
        let current = self.current();
        let leaf = current.cert.first()?;
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf).ok()?;
        Some(parsed.validity().not_after.timestamp())
    }
}

fn certified_key(files: &CertificateFiles) -> Result<CertifiedKey, TlsError> {
    let chain = read_certificates(&files.certificate)?;
    let key = read_private_key(&files.key)?;
    let signing_key =
        provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::Invalid {
                path: files.key.clone(),
                reason: format!("not a usable private key: {e}"),
            })?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|_| TlsError::KeyMismatch {
        certificate: files.certificate.clone(),
        key: files.key.clone(),
    })?;
    Ok(certified)
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for ReloadingCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{issue, new_authority, Usage};

    fn write_node_certificate(dir: &Path, days: u32) -> CertificateFiles {
        let authority = new_authority("test CA", 30).expect("a CA");
        let node = issue(
            &authority.certificate_pem,
            &authority.key_pem,
            "node",
            &["127.0.0.1".to_string(), "localhost".to_string()],
            Usage::Node,
            days,
        )
        .expect("a node certificate");
        let files = CertificateFiles {
            certificate: dir.join("node.pem"),
            key: dir.join("node-key.pem"),
        };
        std::fs::write(&files.certificate, node.certificate_pem).expect("write");
        std::fs::write(&files.key, node.key_pem).expect("write");
        files
    }

    #[test]
    fn a_reload_takes_new_files_and_a_bad_pair_keeps_the_old_certificate() {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = write_node_certificate(dir.path(), 10);
        let certificate = ReloadingCertificate::load(files.clone()).expect("load");
        let first_expiry = certificate.not_after().expect("an expiry");
        assert!(!certificate.changed_on_disk());

        // New files (another expiry): seen as changed, and used once reloaded.
        write_node_certificate(dir.path(), 20);
        assert!(certificate.changed_on_disk());
        certificate.reload().expect("reload");
        assert!(!certificate.changed_on_disk());
        let second_expiry = certificate.not_after().expect("an expiry");
        assert!(second_expiry > first_expiry + 9 * 86_400);

        // A key that does not belong to the certificate is refused and the
        // certificate in use stays.
        let other = dir.path().join("other");
        std::fs::create_dir(&other).expect("mkdir");
        let other_files = write_node_certificate(&other, 5);
        std::fs::copy(&other_files.key, &files.key).expect("copy");
        assert!(matches!(
            certificate.reload(),
            Err(TlsError::KeyMismatch { .. })
        ));
        assert_eq!(certificate.not_after(), Some(second_expiry));

        // Files that are not PEM are refused with their name.
        std::fs::write(&files.certificate, "not a certificate").expect("write");
        let error = certificate.reload().expect_err("not PEM");
        assert!(error.to_string().contains("node.pem"), "{error}");
        assert_eq!(certificate.not_after(), Some(second_expiry));
    }
}
