//! Certificates the TLS tests make themselves: a test CA, and a server
//! certificate it signs for `localhost` and `127.0.0.1`, as PEM files.

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A test CA and one server certificate it signed, in a temporary folder.
pub struct TestPki {
    /// Holds the files.
    pub dir: tempfile::TempDir,
    /// The CA certificate (PEM).
    pub ca_file: PathBuf,
    /// The CA certificate, PEM text.
    pub ca_pem: String,
    /// The server certificate (PEM), for localhost and 127.0.0.1.
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
    /// The base64 SHA-256 of the server key's SubjectPublicKeyInfo: what
    /// Chromium's `--ignore-certificate-errors-spki-list` trusts.
    pub server_spki_sha256: String,
    /// A client certificate the CA signed (PEM), for mutual TLS.
    pub client_cert_file: PathBuf,
    /// Its private key (PEM).
    pub client_key_file: PathBuf,
}

impl TestPki {
    /// A fresh CA and server certificate.
    pub fn new() -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "latchkey test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::from_params(&ca, &ca_key);
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .signed_by(&server_key, &issuer)
            .unwrap();
        let client_key = KeyPair::generate().unwrap();
        let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
        client
            .distinguished_name
            .push(DnType::CommonName, "latchkey");
        let client = client.signed_by(&client_key, &issuer).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let ca_pem = ca_cert.pem();
        let server_spki_sha256 = {
            use base64::Engine;
            use sha2::Digest;
            base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(
                rcgen::PublicKeyData::subject_public_key_info(&server_key),
            ))
        };
        Self {
            ca_file: write("ca.pem", &ca_pem),
            cert_file: write("server.pem", &server.pem()),
            key_file: write("server.key", &server_key.serialize_pem()),
            client_cert_file: write("client.pem", &client.pem()),
            client_key_file: write("client.key", &client_key.serialize_pem()),
            ca_pem,
            server_spki_sha256,
            dir,
        }
    }

    /// A browser (cookie jar, no redirects followed) that trusts the CA.
    pub fn browser(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap())
            .build()
            .unwrap()
    }
}
