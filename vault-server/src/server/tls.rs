//! The listener's TLS (rustls, ring): our accept loop does the handshake itself, so that the
//! handshake and the HTTP/2 preface after it share one deadline. ALPN offers `h2` only.

use std::sync::{Arc, RwLock};

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The listener's TLS config, replaced whole when its files are read again (SIGHUP); each new
/// connection takes the one current at its accept.
#[derive(Debug, Clone)]
pub struct LiveTls(Arc<RwLock<Arc<rustls::ServerConfig>>>);

impl LiveTls {
    pub fn new(config: Arc<rustls::ServerConfig>) -> Self {
        Self(Arc::new(RwLock::new(config)))
    }

    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub fn replace(&self, config: Arc<rustls::ServerConfig>) {
        *self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = config;
    }
}

/// A server config from PEM: the certificate chain, its key, and (for mTLS) the CA whose
/// certificates clients must present. Errors name what is wrong, never the key.
pub fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: Option<&[u8]>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("--tls-cert: cannot parse the PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("--tls-cert holds no PEM CERTIFICATE".into());
    }
    // The parser's error may quote the key's bytes (a key on one line is read as a label).
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| {
        "--tls-key: no usable PEM PRIVATE KEY (each BEGIN and END line on a line of its own)".to_owned()
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    let builder = match client_ca_pem {
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for ca in CertificateDer::pem_slice_iter(pem) {
                let ca = ca.map_err(|e| format!("--tls-client-ca: cannot parse the PEM certificates: {e}"))?;
                roots.add(ca).map_err(|e| format!("--tls-client-ca: unusable CA certificate: {e}"))?;
            }
            if roots.is_empty() {
                return Err("--tls-client-ca holds no PEM CERTIFICATE".into());
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("--tls-client-ca: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("--tls-cert/--tls-key do not make a usable identity: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_key_that_does_not_parse_is_never_quoted() {
        // A key pasted on one line (`echo $KEY > key.pem`): the parser's error held its body.
        let body = "MC4CAQAwBQYDK2VwBCIEIAbcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH";
        let key = format!("-----BEGIN PRIVATE KEY----- {body} -----END PRIVATE KEY-----");
        let cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let e = super::server_config(cert.as_bytes(), key.as_bytes(), None).unwrap_err();
        let bytes: Vec<String> = body.bytes().map(|b| b.to_string()).collect();
        assert!(!e.contains(body) && !e.contains(&bytes[..8].join(", ")), "{e}");
        assert!(e.contains("--tls-key"), "{e}");
    }
}
