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

/// TLS for the connection to the vault. Debug shows which parts are set, never the key.
#[derive(Clone, Default)]
pub struct TlsOptions {
    /// PEM CA that signed the server's certificate; the public roots are used when `None`.
    pub ca_pem: Option<Vec<u8>>,
    /// Name the server's certificate must carry, if not the endpoint's host.
    pub domain: Option<String>,
    /// PEM certificate and key presented to a server that requires mTLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOptions")
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "[set]"))
            .field("domain", &self.domain)
            .field("identity", &self.identity.as_ref().map(|_| "[certificate and key, redacted]"))
            .finish()
    }
}

/// Largest token file read: a token is 48 bytes; a file this long is not one.
const MAX_TOKEN_FILE: u64 = 64 * 1024;

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
    /// names (both trimmed); no token if neither is set (an empty variable is not set).
    pub fn from_env() -> Result<Self, Error> {
        if let Some(t) = std::env::var("VAULT_TOKEN").ok().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()) {
            return Ok(Self::with_token(SecretString::from(t)));
        }
        match std::env::var_os("VAULT_TOKEN_FILE").filter(|p| !p.is_empty()) {
            Some(path) => Self::with_token_file(std::path::Path::new(&path)),
            None => Ok(Self::default()),
        }
    }

    /// Plaintext with the token read from `path` (trimmed), e.g. a mounted secret. A file that
    /// is empty, longer than 64 KiB or not UTF-8 is an `InvalidArgument`.
    pub fn with_token_file(path: &std::path::Path) -> Result<Self, Error> {
        use std::io::Read as _;
        let bad = |why: String| Error::InvalidArgument { message: format!("the token file {}: {why}", path.display()) };
        let mut raw = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_TOKEN_FILE + 1).read_to_end(&mut raw))
            .map_err(|e| bad(format!("cannot be read: {e}")))?;
        if raw.len() as u64 > MAX_TOKEN_FILE {
            return Err(bad("is longer than 64 KiB, so it holds no token".into()));
        }
        let text = String::from_utf8(raw).map_err(|_| bad("is not UTF-8 text".into()))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(bad("is empty".into()));
        }
        Ok(Self::with_token(SecretString::from(token.to_owned())))
    }

    pub(crate) async fn channel(self, endpoint: String) -> Result<(Channel, BearerToken), Error> {
        let ep = self.endpoint(&endpoint)?;
        let channel = ep.connect().await.map_err(|source| Error::Connect { endpoint: shown(&endpoint), source })?;
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
                    first_failure.get_or_insert(Error::Connect { endpoint: shown(endpoint), source });
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
        let shown = shown(endpoint);
        let bad = |e: &dyn std::fmt::Display| Error::InvalidArgument {
            message: format!(
                "bad endpoint {shown}: {e} (write e.g. http://127.0.0.1:50051 or https://vault.example.net)"
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
            check_pem(tls)?;
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
            ep = ep.tls_config(cfg).map_err(|source| Error::Connect { endpoint: shown.clone(), source })?;
        }
        Ok(ep)
    }
}

/// An endpoint as errors show it: its scheme, host and port only, so a token pasted into the
/// address, or one in a path or query, is never repeated; a host or port that is not one (a
/// token has an `_`, which no host name has) and a value that is not a URL are not shown.
pub(crate) fn shown(endpoint: &str) -> String {
    let Some((scheme, rest)) = endpoint
        .split_once("://")
        .filter(|(scheme, _)| !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric()))
    else {
        return "(not shown: it is not a URL)".into();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    // The port is what follows the last `:` outside an IPv6 literal's brackets.
    let (host, port) = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => (&authority[..i], Some(&authority[i + 1..])),
        _ => (authority, None),
    };
    let host_ok = !host.is_empty()
        && host.len() <= 255
        && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'));
    let host = if host_ok { host } else { "(host not shown)" };
    match port {
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{scheme}://{host}:{p}")
        }
        Some(_) => format!("{scheme}://{host}:(port not shown)"),
        None => format!("{scheme}://{host}"),
    }
}

/// The CA and the client identity are PEM that parses, checked before connecting so a bad file
/// is an `InvalidArgument`; the messages are fixed text (a parser's error may quote the key).
fn check_pem(tls: &TlsOptions) -> Result<(), Error> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |message: &str| Error::InvalidArgument { message: message.to_owned() };
    let certificates = |pem: &[u8]| CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().ok();
    if let Some(ca) = &tls.ca_pem
        && certificates(ca).is_none_or(|c| c.is_empty())
    {
        return Err(bad("the CA holds no PEM certificate (-----BEGIN CERTIFICATE-----), or it does not parse"));
    }
    if let Some((cert, key)) = &tls.identity {
        if certificates(cert).is_none_or(|c| c.is_empty()) {
            return Err(bad("the client certificate holds no PEM certificate, or it does not parse"));
        }
        if PrivateKeyDer::from_pem_slice(key).is_err() {
            return Err(bad("the client key holds no PEM private key, or it does not parse"));
        }
    }
    Ok(())
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
        // An empty file, or one far longer than a token, is a bad argument, not an empty token.
        let empty = std::env::temp_dir().join(format!("vault-client-empty-{}", std::process::id()));
        for content in [String::new(), " \n".to_owned(), "x".repeat(70_000)] {
            std::fs::write(&empty, &content).unwrap();
            let e = ConnectOptions::with_token_file(&empty).unwrap_err();
            assert!(matches!(&e, Error::InvalidArgument { .. }), "{e}");
        }
        std::fs::remove_file(&empty).unwrap();
    }

    #[tokio::test]
    async fn an_address_is_shown_without_what_follows_its_authority_and_a_non_url_not_at_all() {
        let token = "avt_0123456789abcdef0123456789abcdef0123456789ab";
        // A token pasted as the address (swapped variables).
        let e = ConnectOptions::default().channel(token.into()).await.unwrap_err();
        assert!(matches!(&e, Error::InvalidArgument { .. }) && !e.to_string().contains("0123456789"), "{e}");
        // A secret in the path or query, refused for TLS options on http://, and at connect.
        let addr = format!("http://127.0.0.1:9/x?token={token}");
        let tls = ConnectOptions { tls: Some(TlsOptions::default()), ..ConnectOptions::default() };
        let e = tls.channel(addr.clone()).await.unwrap_err();
        assert!(!e.to_string().contains("0123456789"), "{e}");
        let e = ConnectOptions::default().channel(addr).await.unwrap_err();
        assert!(e.to_string().contains("http://127.0.0.1:9") && !e.to_string().contains("0123456789"), "{e}");
        // In the host or the port; and through connect_many.
        for addr in [format!("https://h:{token}"), format!("https://{token}:1"), format!("http://127.0.0.1:9/{token}")]
        {
            let e = ConnectOptions::default().channel(addr.clone()).await.unwrap_err();
            assert!(!e.to_string().contains("0123456789"), "{addr}: {e}");
            let e = ConnectOptions::default().channels(vec![addr.clone()]).await.map(|_| ()).unwrap_err();
            assert!(!e.to_string().contains("0123456789"), "{addr}: {e}");
        }
        assert_eq!(shown("https://[::1]:50051/x"), "https://[::1]:50051");
        assert_eq!(shown("http://vault.example.net"), "http://vault.example.net");
    }

    #[tokio::test]
    async fn tls_files_that_do_not_parse_are_bad_arguments_and_debug_never_shows_the_key() {
        let key =
            b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n".to_vec();
        let identity =
            TlsOptions { identity: Some((b"not a certificate".to_vec(), key.clone())), ..TlsOptions::default() };
        let options = ConnectOptions { tls: Some(identity), ..ConnectOptions::default() };
        let shown = format!("{options:?}");
        assert!(!shown.contains("PRIVATE") && !shown.contains("80, 82, 73") && !shown.contains("MC4CAQ"), "{shown}");
        let e = options.channel("https://127.0.0.1:9".into()).await.unwrap_err();
        assert!(matches!(&e, Error::InvalidArgument { .. }) && !e.to_string().contains("MC4CAQ"), "{e}");
        for ca in [b"hello".to_vec(), b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n".to_vec()] {
            let tls = TlsOptions { ca_pem: Some(ca), ..TlsOptions::default() };
            let e = ConnectOptions { tls: Some(tls), ..ConnectOptions::default() }
                .channel("https://127.0.0.1:9".into())
                .await
                .unwrap_err();
            assert!(matches!(&e, Error::InvalidArgument { message } if message.contains("CA")), "{e}");
        }
    }
}
