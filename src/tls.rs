//! TLS on rustls: the CA certificates latchkey trusts beyond the system's
//! (`provider_ca_files`, `upstream_ca_files`), the client configuration of
//! the connections to an `https://` upstream (with an optional client
//! certificate), the certificate and key a server presents (the
//! development IdP's, and the listener's), and a small https server.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The DER certificates in the PEM file at `path`; `Err` says what is wrong
/// with it (missing, unreadable, or no certificate in it).
pub fn certificates(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let iter = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certificates = iter
        .map(|cert| cert.map(|c| c.as_ref().to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not PEM: {e}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!(
            "{} holds no certificate (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certificates)
}

/// The certificate chain in `cert_file` and the private key in `key_file`.
fn chain_and_key(
    cert_file: &Path,
    key_file: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let chain = certificates(cert_file)?
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("{} holds no usable private key: {e}", key_file.display()))?;
    Ok((chain, key))
}

fn mismatched(cert_file: &Path, key_file: &Path, error: rustls::Error) -> String {
    format!(
        "{} and {} do not make a certificate and its key: {error}",
        cert_file.display(),
        key_file.display()
    )
}

/// A rustls server configuration presenting the certificate chain in
/// `cert_file` with the private key in `key_file`, offering `alpn`
/// protocols in that order, TLS 1.2 and 1.3 (1.3 only with `tls13_only`).
pub fn server_config_with(
    cert_file: &Path,
    key_file: &Path,
    alpn: &[&[u8]],
    tls13_only: bool,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let (chain, key) = chain_and_key(cert_file, key_file)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider);
    let builder = if tls13_only {
        builder.with_protocol_versions(&[&rustls::version::TLS13])
    } else {
        builder.with_safe_default_protocol_versions()
    }
    .map_err(|e| e.to_string())?;
    let mut config = builder
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| mismatched(cert_file, key_file, e))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// [`server_config_with`] TLS 1.2 and 1.3.
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, String> {
    server_config_with(cert_file, key_file, alpn, false)
}

/// A rustls client configuration trusting the system trust store, the
/// bundled web roots and `extra_roots` (DER), presenting the certificate
/// chain and key in `identity` (`(cert_file, key_file)`) when a server asks.
pub fn client_config(
    extra_roots: &[Vec<u8>],
    identity: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // The system store: whatever loads (a missing store is no error).
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    for (i, der) in extra_roots.iter().enumerate() {
        roots
            .add(CertificateDer::from(der.clone()))
            .map_err(|e| format!("CA certificate {} cannot be used: {e}", i + 1))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some((cert_file, key_file)) => {
            let (chain, key) = chain_and_key(cert_file, key_file)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| mismatched(cert_file, key_file, e))
        }
    }
}

/// Serves `app` over TLS with `acceptor` on `listener` until `stop`
/// resolves (connections in flight are dropped with the task): the
/// development IdP's https, and the tests' https upstreams.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: axum::Router,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => return,
        };
        let Ok((tcp, _)) = accepted else { continue };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            // A client that fails the handshake (an untrusted CA, no
            // client certificate where one is required) is gone.
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .with_upgrades()
                .await;
        });
    }
}

/// The listener's TLS: its settings, and the acceptor that new connections
/// use, replaced whole by [`ListenerTls::reload`] (connections already open
/// keep the one they started with).
#[derive(Clone)]
pub struct ListenerTls {
    cert_file: std::path::PathBuf,
    key_file: std::path::PathBuf,
    tls13_only: bool,
    current: Arc<arc_swap::ArcSwap<tokio_rustls::TlsAcceptor>>,
}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTls")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("tls13_only", &self.tls13_only)
            .finish_non_exhaustive()
    }
}

/// What the listener offers by ALPN: HTTP/2 first, as browsers expect of
/// an https endpoint.
const LISTENER_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

impl ListenerTls {
    /// The listener's TLS from `cert_file` and `key_file`; `Err` says what
    /// is wrong with them.
    pub fn load(cert_file: &Path, key_file: &Path, tls13_only: bool) -> Result<Self, String> {
        let config = server_config_with(cert_file, key_file, LISTENER_ALPN, tls13_only)?;
        Ok(Self {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            tls13_only,
            current: Arc::new(arc_swap::ArcSwap::from_pointee(
                tokio_rustls::TlsAcceptor::from(config),
            )),
        })
    }

    /// Reads the files again (a renewed certificate) and uses them for the
    /// connections accepted from now on; on `Err` the previous ones stay.
    pub fn reload(&self) -> Result<(), String> {
        let config = server_config_with(
            &self.cert_file,
            &self.key_file,
            LISTENER_ALPN,
            self.tls13_only,
        )?;
        self.current
            .store(Arc::new(tokio_rustls::TlsAcceptor::from(config)));
        Ok(())
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> Arc<tokio_rustls::TlsAcceptor> {
        self.current.load_full()
    }
}
