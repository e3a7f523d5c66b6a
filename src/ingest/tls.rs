//! amqps: the TLS settings every broker connection of the node uses (ingest, cluster control,
//! webhooks, `check-config`). Loaded and checked once at start ([`load`]; the error names the key
//! and the file), installed for the process ([`install`]), applied by [`connect`] to every
//! `amqps://` URL. rustls on *ring*; the server's certificate must chain to the configured CA
//! (`amqp_tls_ca_file`) or to a public root (webpki roots), and must name the URL's host.

use std::path::Path;
use std::sync::OnceLock;

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::{Connection, ConnectionProperties};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The loaded PEM texts.
#[derive(Clone, Debug, Default)]
pub struct AmqpTls {
    /// CA certificates the broker's chain may end in (besides the public roots).
    pub ca_pem: Option<String>,
    /// Client certificate chain and its private key, for brokers that ask for one.
    pub identity: Option<(String, String)>,
}

static INSTALLED: OnceLock<AmqpTls> = OnceLock::new();

/// Reads and checks the files: each must hold what its key says (certificates, a private key),
/// and a client certificate comes with its key. Errors name the key and the file.
pub fn load(
    ca_file: Option<&Path>,
    cert_file: Option<&Path>,
    key_file: Option<&Path>,
) -> Result<AmqpTls, String> {
    let read = |key: &str, path: &Path| {
        std::fs::read_to_string(path).map_err(|e| format!("{key} {}: {e}", path.display()))
    };
    let certificates = |key: &str, path: &Path| -> Result<String, String> {
        let text = read(key, path)?;
        let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(text.as_bytes()).collect();
        match certs {
            Ok(certs) if !certs.is_empty() => Ok(text),
            Ok(_) => Err(format!(
                "{key} {}: no PEM certificate in it",
                path.display()
            )),
            Err(e) => Err(format!(
                "{key} {}: not PEM certificates ({e})",
                path.display()
            )),
        }
    };
    let ca_pem = ca_file
        .map(|path| certificates("amqp_tls_ca_file", path))
        .transpose()?;
    let identity = match (cert_file, key_file) {
        (None, None) => None,
        (Some(cert), Some(key)) => {
            let chain = certificates("amqp_tls_cert_file", cert)?;
            let text = read("amqp_tls_key_file", key)?;
            PrivateKeyDer::from_pem_slice(text.as_bytes()).map_err(|e| {
                format!(
                    "amqp_tls_key_file {}: not a PEM private key ({e})",
                    key.display()
                )
            })?;
            Some((chain, text))
        }
        (Some(_), None) => return Err("amqp_tls_cert_file needs amqp_tls_key_file".into()),
        (None, Some(_)) => return Err("amqp_tls_key_file needs amqp_tls_cert_file".into()),
    };
    Ok(AmqpTls { ca_pem, identity })
}

/// Makes `tls` the settings of every later [`connect`] (the first call wins).
pub fn install(tls: AmqpTls) {
    let _ = INSTALLED.set(tls);
}

/// Connects to the broker at `url`: over TLS with the installed settings for `amqps://`, plain
/// TCP for `amqp://`.
pub async fn connect(url: &str) -> lapin::Result<Connection> {
    let properties = ConnectionProperties::default();
    if !url.starts_with("amqps://") {
        return Connection::connect(url, properties).await;
    }
    let tls = INSTALLED.get().cloned().unwrap_or_default();
    let config = OwnedTLSConfig {
        identity: tls.identity.map(|(pem, key)| OwnedIdentity::PKCS8 {
            pem: pem.into_bytes(),
            key: key.into_bytes(),
        }),
        cert_chain: tls.ca_pem,
    };
    let runtime = lapin::runtime::default_runtime()?;
    Connection::connect_with_config(url, properties, config, runtime).await
}
