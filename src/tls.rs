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

/// A rustls server configuration presenting the certificate chain in
/// `cert_file` with the private key in `key_file`, offering `alpn`
/// protocols in that order.
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain = certificates(cert_file)?
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("{} holds no usable private key: {e}", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            format!(
                "{} and {} do not make a certificate and its key: {e}",
                cert_file.display(),
                key_file.display()
            )
        })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
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
            let chain = certificates(cert_file)?
                .into_iter()
                .map(CertificateDer::from)
                .collect();
            let key = PrivateKeyDer::from_pem_file(key_file)
                .map_err(|e| format!("{} holds no usable private key: {e}", key_file.display()))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                format!(
                    "{} and {} do not make a certificate and its key: {e}",
                    cert_file.display(),
                    key_file.display()
                )
            })
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
