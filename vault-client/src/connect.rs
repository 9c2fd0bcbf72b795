//! Connection settings: bearer token, TLS (CA, client identity for mTLS) and timeouts.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::Error;

/// TLS for the connection to the vault.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// PEM CA that signed the server's certificate; the public roots are used when `None`.
    pub ca_pem: Option<Vec<u8>>,
    /// Name the server's certificate must carry, if not the endpoint's host.
    pub domain: Option<String>,
    /// PEM certificate and key presented to a server that requires mTLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// How to reach and authenticate to the vault.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// Bearer token (`avt_...`): an admin token, or a client token for Reveal.
    pub token: Option<SecretString>,
    /// TLS settings; plaintext when `None`.
    pub tls: Option<TlsOptions>,
    /// Per-call timeout; none when `None`.
    pub timeout: Option<Duration>,
    /// Connect timeout; none when `None`.
    pub connect_timeout: Option<Duration>,
}

impl ConnectOptions {
    /// Plaintext with a bearer token.
    ///
    /// ```
    /// use vault_client::{ConnectOptions, SecretString};
    /// let options = ConnectOptions::with_token(SecretString::from("avt_..."));
    /// assert!(options.tls.is_none());
    /// assert!(!format!("{options:?}").contains("avt_"));
    /// ```
    pub fn with_token(token: SecretString) -> Self {
        Self { token: Some(token), ..Self::default() }
    }

    pub(crate) async fn channel(self, endpoint: String) -> Result<(Channel, BearerToken), Error> {
        let bad = |e: &dyn std::fmt::Display| Error::InvalidArgument { message: format!("bad endpoint: {e}") };
        let mut ep = Channel::from_shared(endpoint).map_err(|e| bad(&e))?;
        if let Some(t) = self.timeout {
            ep = ep.timeout(t);
        }
        if let Some(t) = self.connect_timeout {
            ep = ep.connect_timeout(t);
        }
        if let Some(tls) = self.tls {
            let mut cfg = ClientTlsConfig::new();
            cfg = match tls.ca_pem {
                Some(ca) => cfg.ca_certificate(Certificate::from_pem(ca)),
                None => cfg.with_webpki_roots(),
            };
            if let Some(d) = tls.domain {
                cfg = cfg.domain_name(d);
            }
            if let Some((cert, key)) = tls.identity {
                cfg = cfg.identity(Identity::from_pem(cert, key));
            }
            ep = ep.tls_config(cfg)?;
        }
        let token = match self.token {
            Some(t) => {
                let mut v: AsciiMetadataValue = MetadataValue::try_from(format!("Bearer {}", t.expose_secret()))
                    .map_err(|_| Error::InvalidArgument { message: "the token is not valid ASCII".into() })?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        Ok((ep.connect().await?, BearerToken(token)))
    }
}

/// Adds `authorization: Bearer ...` to every call. Debug never shows the token.
#[derive(Clone)]
pub struct BearerToken(Option<AsciiMetadataValue>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "BearerToken([redacted])" } else { "BearerToken(None)" })
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}
