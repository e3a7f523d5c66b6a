//! Shared by the benchmarks that run wss: a CA and a server certificate for `localhost` (ECDSA
//! P-256, what a TLS deployment would choose for handshake cost, or RSA-2048 with
//! `HORIZON_BENCH_TLS_KEY=rsa`; made with `openssl` in a
//! temporary directory), the gateway's wss settings, and a rustls client that trusts the CA.
//! Include with `#[path = "support/tls.rs"] mod tls;`.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use tokio_rustls::rustls;

/// The files of one run; removed with it.
pub struct Certificates {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Makes a CA and a certificate it signed for `localhost` and 127.0.0.1.
pub fn certificates() -> Certificates {
    let dir = std::env::temp_dir().join(format!("horizon-bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |args: &[&str]| {
        let status = Command::new("openssl")
            .current_dir(&dir)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(status.success(), "openssl {args:?}");
    };
    let p256 = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &p256,
        &["-days", "2", "-subj", "/CN=horizon-bench-ca"],
        &["-keyout", "ca.key", "-out", "ca.pem"],
    ]
    .concat());
    // `HORIZON_BENCH_TLS_KEY=rsa`: an RSA-2048 server key instead (the CA stays P-256).
    let rsa = ["-newkey", "rsa:2048", "-nodes"];
    let server_key: &[&str] = if std::env::var("HORIZON_BENCH_TLS_KEY").is_ok_and(|k| k == "rsa") {
        &rsa
    } else {
        &p256
    };
    run(&[
        &["req"][..],
        server_key,
        &["-subj", "/CN=localhost"],
        &["-keyout", "server.key", "-out", "server.csr"],
    ]
    .concat());
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ]);
    Certificates {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        dir,
    }
}

/// A client trusting `ca`, TLS 1.3, ALPN `http/1.1`; `resume`: whether it may resume sessions.
pub fn client_config(ca: &Path, resume: bool) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Arc::new(config)
}

/// A blocking TLS stream to `addr` (the handshake completes on first use).
pub fn connect(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let tcp = TcpStream::connect(addr)?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn =
        rustls::ClientConnection::new(config.clone(), name).map_err(std::io::Error::other)?;
    Ok(rustls::StreamOwned::new(conn, tcp))
}
