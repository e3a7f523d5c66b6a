//! wss: the TLS settings of the WebSocket listener (`wss_listen`, `tls_cert_file`,
//! `tls_key_file`). rustls on *ring*, TLS 1.2 and 1.3 only, ALPN `http/1.1`.
//!
//! The certificate and key are loaded and checked at start ([`ServerTls::load`]): each file must
//! be readable and hold what its key says, the key must be the certificate's, and the certificate
//! must be valid now; otherwise the node refuses to start with the file named. On SIGHUP
//! [`ServerTls::reload`] reads both files again with the same checks and, only if they pass,
//! swaps them in: a new connection gets the new certificate, a connection already open keeps the
//! keys it agreed. A bad new pair is refused (the error says why) and the old one stays.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The TLS side of the wss listener: one rustls configuration for every shard, its certificate
/// swappable while the node runs.
#[derive(Debug)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
    certificate: Arc<Certificate>,
    cert_file: PathBuf,
    key_file: PathBuf,
}

/// What a loaded certificate says of itself, for the start-up line and the reload log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The end-entity certificate's subject.
    pub subject: String,
    /// When it expires.
    pub not_after: SystemTime,
}

impl CertificateInfo {
    /// Whole days from now until it expires (0 once it has).
    pub fn days_left(&self) -> u64 {
        self.not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .as_secs()
            / 86_400
    }
}

/// The certificate in force; its resolver hands it to every handshake.
#[derive(Debug)]
struct Certificate {
    current: RwLock<(Arc<CertifiedKey>, CertificateInfo)>,
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match self.current.read() {
            Ok(current) => Some(current.0.clone()),
            Err(poisoned) => Some(poisoned.into_inner().0.clone()),
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl ServerTls {
    /// Reads and checks `cert_file` (PEM chain, end-entity certificate first) and `key_file`
    /// (PEM private key: PKCS#8, PKCS#1 or SEC1). Errors name the key and the file.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<ServerTls, String> {
        let provider = provider();
        let (key, info) = certified_key(cert_file, key_file, &provider)?;
        let certificate = Arc::new(Certificate {
            current: RwLock::new((key, info)),
        });
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(certificate.clone());
        // A client that names protocols must accept HTTP/1.1 (the upgrade); one that names none
        // gets it anyway.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ServerTls {
            config: Arc::new(config),
            certificate,
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
        })
    }

    /// The rustls configuration every TLS socket of the node is opened with.
    pub fn config(&self) -> &Arc<ServerConfig> {
        &self.config
    }

    /// The certificate in force.
    pub fn info(&self) -> CertificateInfo {
        match self.certificate.current.read() {
            Ok(current) => current.1.clone(),
            Err(poisoned) => poisoned.into_inner().1.clone(),
        }
    }

    /// Reads both files again and, if they pass the start-up checks, makes them the certificate
    /// of every later handshake. On error the certificate in force stays.
    pub fn reload(&self) -> Result<CertificateInfo, String> {
        let (key, info) = certified_key(&self.cert_file, &self.key_file, &provider())?;
        let mut current = match self.certificate.current.write() {
            Ok(current) => current,
            Err(poisoned) => poisoned.into_inner(),
        };
        *current = (key, info.clone());
        Ok(info)
    }
}

/// The checks of [`ServerTls::load`]: the files, the key against the certificate, the dates.
fn certified_key(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<(Arc<CertifiedKey>, CertificateInfo), String> {
    let cert_name = || format!("tls_cert_file {}", cert_file.display());
    let key_name = || format!("tls_key_file {}", key_file.display());
    let cert_pem = std::fs::read(cert_file).map_err(|e| format!("{}: {e}", cert_name()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not PEM certificates ({e})", cert_name()))?;
    let Some(leaf) = chain.first() else {
        return Err(format!("{}: no PEM certificate in it", cert_name()));
    };
    let info = validity(leaf).map_err(|e| format!("{}: {e}", cert_name()))?;
    let now = SystemTime::now();
    if info.0 > now {
        return Err(format!(
            "{}: the certificate is not valid yet (not before {})",
            cert_name(),
            utc(info.0)
        ));
    }
    if info.1.not_after <= now {
        return Err(format!(
            "{}: the certificate expired on {}",
            cert_name(),
            utc(info.1.not_after)
        ));
    }
    let key_pem = std::fs::read(key_file).map_err(|e| format!("{}: {e}", key_name()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("{}: not a PEM private key ({e})", key_name()))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{}: unusable private key ({e})", key_name()))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(format!(
                "{}: the key does not match the certificate in {}",
                key_name(),
                cert_file.display()
            ))
        }
        Err(e) => {
            return Err(format!(
                "{}: cannot check the key against {} ({e})",
                key_name(),
                cert_file.display()
            ))
        }
    }
    Ok((Arc::new(certified), info.1))
}

/// The certificate's not-before, not-after and subject.
fn validity(der: &CertificateDer<'_>) -> Result<(SystemTime, CertificateInfo), String> {
    use x509_cert::der::Decode as _;
    let cert = x509_cert::Certificate::from_der(der.as_ref())
        .map_err(|e| format!("not an X.509 certificate ({e})"))?;
    let validity = &cert.tbs_certificate.validity;
    Ok((
        validity.not_before.to_system_time(),
        CertificateInfo {
            subject: cert.tbs_certificate.subject.to_string(),
            not_after: validity.not_after.to_system_time(),
        },
    ))
}

/// `2026-12-03T04:05:06Z`.
pub fn utc(at: SystemTime) -> String {
    crate::auth::format_rfc3339(at)
}

/// How long before expiry the node warns at start and on reload.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86_400);
