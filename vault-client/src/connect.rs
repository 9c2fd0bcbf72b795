//! Connection settings: bearer token, TLS (CA, client identity for mTLS) and timeouts.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::Error;

/// `connect_many`'s connect timeout when the options set none.
const MANY_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// `connect_many`'s HTTP/2 keepalive: a ping this often, the connection given up after this
/// long without an answer.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);

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

    /// Plaintext with the token from `$VAULT_TOKEN`, or else from the file `$VAULT_TOKEN_FILE`
    /// names (trimmed); no token if neither is set.
    pub fn from_env() -> Result<Self, Error> {
        if let Some(t) = std::env::var("VAULT_TOKEN").ok().filter(|t| !t.is_empty()) {
            return Ok(Self::with_token(SecretString::from(t)));
        }
        match std::env::var_os("VAULT_TOKEN_FILE") {
            Some(path) => Self::with_token_file(std::path::Path::new(&path)),
            None => Ok(Self::default()),
        }
    }

    /// Plaintext with the token read from `path` (trimmed), e.g. a mounted secret.
    pub fn with_token_file(path: &std::path::Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::InvalidArgument {
            message: format!("cannot read the token file {}: {e}", path.display()),
        })?;
        Ok(Self::with_token(SecretString::from(text.trim().to_owned())))
    }

    pub(crate) async fn channel(self, endpoint: String) -> Result<(Channel, BearerToken), Error> {
        let ep = self.endpoint(&endpoint)?;
        let channel = ep.connect().await.map_err(|source| Error::Connect { endpoint: endpoint.clone(), source })?;
        Ok((channel, self.bearer_token()?))
    }

    /// Channels to every endpoint (replicas of one vault). Each connects now if it can, else
    /// when a call first needs it; at least one must answer now.
    pub(crate) async fn channels(self, endpoints: Vec<String>) -> Result<(Vec<Channel>, BearerToken), Error> {
        if endpoints.is_empty() {
            return Err(Error::InvalidArgument { message: "no endpoint given".into() });
        }
        let mut channels = Vec::with_capacity(endpoints.len());
        let mut first_failure = None;
        let mut reachable = false;
        for endpoint in &endpoints {
            // A replica that stopped answering (no reset) must not hold calls for the OS's TCP
            // timeout: connects give up, and keepalive pings find a dead connection.
            let ep = self
                .endpoint(endpoint)?
                .connect_timeout(self.connect_timeout.unwrap_or(MANY_CONNECT_TIMEOUT))
                .http2_keep_alive_interval(KEEPALIVE_EVERY)
                .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                .keep_alive_while_idle(true);
            match ep.connect().await {
                Ok(channel) => {
                    reachable = true;
                    channels.push(channel);
                }
                Err(source) => {
                    first_failure.get_or_insert(Error::Connect { endpoint: endpoint.clone(), source });
                    channels.push(ep.connect_lazy());
                }
            }
        }
        match first_failure {
            Some(e) if !reachable => Err(e),
            _ => Ok((channels, self.bearer_token()?)),
        }
    }

    fn bearer_token(&self) -> Result<BearerToken, Error> {
        Ok(BearerToken { token: self.token.as_ref().map(bearer).transpose()?, timeout: None })
    }

    fn endpoint(&self, endpoint: &str) -> Result<tonic::transport::Endpoint, Error> {
        // A user name or password in the address is no credential here (the token is), and
        // errors below show the address: refused without showing it. Anywhere, since a password
        // may hold a / or # that would end the authority early; an address needs no @.
        if endpoint.contains('@') {
            return Err(Error::InvalidArgument {
                message: "bad endpoint: it holds a user name or password (before an @), which the vault does not use; \
                          it authenticates with the token (write e.g. https://vault.example.net)"
                    .into(),
            });
        }
        let bad = |e: &dyn std::fmt::Display| Error::InvalidArgument {
            message: format!(
                "bad endpoint {endpoint:?}: {e} (write e.g. http://127.0.0.1:50051 or https://vault.example.net)"
            ),
        };
        let Some((scheme, rest)) = endpoint.split_once("://") else {
            return Err(bad(&"no scheme"));
        };
        // Any other scheme would connect in plaintext, carrying the token in the clear.
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(bad(&"the scheme must be http or https"));
        }
        // tonic ignores TLS settings on an http:// address, and the token would go in the clear.
        if scheme == "http" && self.tls.is_some() {
            return Err(bad(&"TLS options are set but the address is http://; write https://"));
        }
        let mut ep = Channel::from_shared(format!("{scheme}://{rest}")).map_err(|e| bad(&e))?;
        if let Some(t) = self.timeout {
            ep = ep.timeout(t);
        }
        if let Some(t) = self.connect_timeout {
            ep = ep.connect_timeout(t);
        }
        if let Some(tls) = &self.tls {
            let mut cfg = ClientTlsConfig::new();
            cfg = match &tls.ca_pem {
                Some(ca) => cfg.ca_certificate(Certificate::from_pem(ca)),
                None => cfg.with_webpki_roots(),
            };
            if let Some(d) = &tls.domain {
                cfg = cfg.domain_name(d.clone());
            }
            if let Some((cert, key)) = &tls.identity {
                cfg = cfg.identity(Identity::from_pem(cert, key));
            }
            ep = ep.tls_config(cfg).map_err(|source| Error::Connect { endpoint: endpoint.to_owned(), source })?;
        }
        Ok(ep)
    }
}

/// The `authorization` header value for `token`, marked sensitive.
pub(crate) fn bearer(token: &SecretString) -> Result<AsciiMetadataValue, Error> {
    let mut v: AsciiMetadataValue = MetadataValue::try_from(format!("Bearer {}", token.expose_secret()))
        .map_err(|_| Error::InvalidArgument { message: "the token is not valid ASCII".into() })?;
    v.set_sensitive(true);
    Ok(v)
}

/// Adds `authorization: Bearer ...` and the per-call deadline to every call. Debug never shows
/// the token.
#[derive(Clone)]
pub struct BearerToken {
    pub(crate) token: Option<AsciiMetadataValue>,
    pub(crate) timeout: Option<Duration>,
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerToken")
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.token {
            request.metadata_mut().insert("authorization", v.clone());
        }
        if let Some(t) = self.timeout {
            request.set_timeout(t);
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_scheme_and_a_dead_port_say_different_things() {
        let no_scheme = ConnectOptions::default().channel("127.0.0.1:50051".into()).await.unwrap_err();
        assert!(
            matches!(&no_scheme, Error::InvalidArgument { message } if message.contains("no scheme")),
            "{no_scheme}"
        );
        // Unknown schemes would connect in plaintext: refused before any connection.
        for addr in ["grpcs://127.0.0.1:9", "tls://127.0.0.1:9", "ftp://127.0.0.1:9"] {
            let e = ConnectOptions::default().channel(addr.into()).await.unwrap_err();
            assert!(matches!(&e, Error::InvalidArgument { message } if message.contains("http or https")), "{e}");
        }
        // TLS options on an http:// address would be ignored: refused.
        let tls = ConnectOptions { tls: Some(TlsOptions::default()), ..ConnectOptions::default() };
        let e = tls.channel("http://127.0.0.1:9".into()).await.unwrap_err();
        assert!(matches!(&e, Error::InvalidArgument { message } if message.contains("https://")), "{e}");
        // A password in the address is refused, and not shown.
        for addr in [
            "http://admin:hunter2@127.0.0.1:9",
            "admin:hunter2@127.0.0.1:9",
            "https://hunter2@h:1/x",
            "http://admin:hunter2#x@vault.example.net:50051",
            "admin:hunter2/x@host",
        ] {
            let e = ConnectOptions::default().channel(addr.into()).await.unwrap_err();
            let text = e.to_string();
            assert!(matches!(&e, Error::InvalidArgument { .. }) && text.contains("user name or password"), "{text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
        // The scheme's case does not matter.
        let upper = ConnectOptions::default().channel("HTTP://127.0.0.1:9".into()).await.unwrap_err();
        assert!(matches!(upper, Error::Connect { .. }), "{upper}");
        // Port 9 (discard) on loopback: nothing listens in a test sandbox.
        let dead = ConnectOptions::default().channel("http://127.0.0.1:9".into()).await.unwrap_err();
        let text = dead.to_string();
        assert!(matches!(dead, Error::Connect { .. }), "{text}");
        assert!(text.contains("http://127.0.0.1:9") && text.to_lowercase().contains("refused"), "{text}");
    }

    #[test]
    fn a_token_file_is_read_and_trimmed_and_never_printed() {
        let dir = std::env::temp_dir().join(format!("vault-client-token-{}", std::process::id()));
        std::fs::write(&dir, "avt_secret_value\n").unwrap();
        let options = ConnectOptions::with_token_file(&dir).unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(options.token.as_ref().map(|t| t.expose_secret().to_owned()).as_deref(), Some("avt_secret_value"));
        assert!(!format!("{options:?}").contains("avt_secret"));
        let missing = ConnectOptions::with_token_file(std::path::Path::new("/nonexistent/token")).unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/token"), "{missing}");
    }
}
