//! Client for authcode-vault, the gRPC vault for mail-provider client auth codes.
//!
//! [`VaultClient`] has one method per RPC, plain Rust values in and out ([`Credential`],
//! [`ProbeReport`], [`Page`], times as `SystemTime`) and a typed [`Error`]; the generated
//! messages in [`proto`] stay reachable through [`VaultClient::raw`]. Auth codes travel as
//! [`SecretString`] and never appear in a Debug print. A sync worker reveals its own code with
//! a client token; admin tools bind, rotate, revoke, verify and review with an admin token.
//! The listings take a plain filter and a page token and return a [`Page`]; `list_all`,
//! `unused_all` and `audit_all` walk every page. `examples/lifecycle.rs` calls every RPC once
//! (the README's walkthrough runs it against a real server).
//!
//! The channel reconnects by itself after a dropped connection; set per-call and connect
//! timeouts and TLS in [`ConnectOptions`]. `bind`, `rotate` and `revoke` send a fresh
//! `request_id` and, when the connection fails before an answer arrives or the vault answers
//! `STORAGE_OUTCOME_UNKNOWN` (its COMMIT went unanswered), send the same call again (at most 3
//! sends in all): the vault answers a repeated id once, so a retry never binds or rotates twice.
//!
//! [`VaultClient::connect_many`] takes every replica of a vault that share one database. Calls
//! go to them in turn; a call that finds its replica unreachable or unable to serve
//! (`UNAVAILABLE`, after the `RetryInfo` delay if the vault sent one, or its per-call timeout
//! expired) goes to the next one: Reveal, Get and the listings try each replica once; writes are
//! resent with their request id only as above (a lost connection or an unknown outcome, not
//! another answer or a timeout),
//! and Verify (which probes the provider) is never resent.
//! Without a connect timeout in the options, `connect_many` sets 2 s, and its connections send
//! HTTP/2 keepalive pings, so a replica that stopped answering is given up on.
//!
//! ```no_run
//! # async fn demo() -> Result<(), vault_client::Error> {
//! use secrecy::{ExposeSecret, SecretString};
//! use vault_client::{ConnectOptions, VaultClient};
//! let token = SecretString::from(std::env::var("VAULT_TOKEN").unwrap_or_default());
//! let mut vault = VaultClient::connect("http://127.0.0.1:50051", ConnectOptions::with_token(token)).await?;
//! vault.bind("alice@sina.com", "sender", SecretString::from("abcd1234efgh5678")).await?;
//! let revealed = vault.reveal("alice@sina.com", "sender").await?;
//! println!("log in to {}:{}", revealed.imap_host, revealed.imap_port);
//! let _code: &str = revealed.code.expose_secret();
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod connect;
mod error;
mod listing;
pub mod proto;
mod retry;
mod types;

pub use connect::{ConnectOptions, TlsOptions};
pub use error::Error;
pub use listing::{AuditFilter, CredentialFilter, UnusedFilter};
pub use proto::{CredentialState, ProbeOutcome};
pub use secrecy::{ExposeSecret, SecretString};
/// The gRPC status code of [`Error::Other`].
pub use tonic::Code;
/// A connection to build a client on with [`VaultClient::from_channel`].
pub use tonic::transport::Channel;
pub use types::{
    AuditEvent, Bound, Credential, DataKeyRotated, Page, ProbeReport, Revoked, Rotated, UnusedClient, Verified,
};

use tonic::service::interceptor::InterceptedService;

use connect::BearerToken;
use proto::auth_code_vault_client::AuthCodeVaultClient;

/// The generated client with the bearer-token interceptor.
pub type Inner = AuthCodeVaultClient<InterceptedService<Channel, BearerToken>>;

/// A revealed code and where to use it. Debug shows the code redacted.
#[derive(Debug)]
pub struct Revealed {
    /// The plaintext auth code.
    pub code: SecretString,
    /// The binding's version.
    pub version: u64,
    /// The provider's IMAP host (implicit TLS).
    pub imap_host: String,
    /// The provider's IMAP port.
    pub imap_port: u16,
    /// The provider's SMTP host (implicit TLS).
    pub smtp_host: String,
    /// The provider's SMTP port.
    pub smtp_port: u16,
}

/// A connection to the vault (or to each of its replicas). Cheap to clone; clones share the
/// connections.
#[derive(Debug, Clone)]
pub struct VaultClient {
    /// The first replica's client, for [`VaultClient::raw`].
    inner: Inner,
    /// One client per replica (never empty).
    replicas: std::sync::Arc<[Inner]>,
    /// The first replica's channel, and every replica's.
    first: Channel,
    channels: std::sync::Arc<[Channel]>,
    /// The replica the next call starts at, shared by clones.
    next: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    token: BearerToken,
}

impl VaultClient {
    /// Connects to `endpoint` (`http://...` or, with [`TlsOptions`], `https://...`; no other
    /// scheme, and no user name or password before an `@`). The token, if any, is sent as
    /// `authorization: Bearer ...` on every call.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), vault_client::Error> {
    /// use vault_client::{ConnectOptions, SecretString, TlsOptions, VaultClient};
    /// let options = ConnectOptions {
    ///     token: Some(SecretString::from("avt_...")),
    ///     tls: Some(TlsOptions { ca_pem: std::fs::read("vault-ca.pem").ok(), ..Default::default() }),
    ///     timeout: Some(std::time::Duration::from_secs(30)),
    ///     ..Default::default()
    /// };
    /// let vault = VaultClient::connect("https://vault.example.net:50051", options).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(endpoint: impl Into<String>, options: ConnectOptions) -> Result<Self, Error> {
        let (channel, token) = options.channel(endpoint.into()).await?;
        Ok(Self::build(channel, Vec::new(), token))
    }

    /// Connects to several replicas of one vault (sharing one PostgreSQL database). Calls are
    /// spread over them in turn, and one that finds its replica down goes to the next. At least
    /// one must answer now; the others are connected when first needed.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), vault_client::Error> {
    /// use vault_client::{ConnectOptions, SecretString, VaultClient};
    /// let replicas = ["https://vault-a.internal:50051", "https://vault-b.internal:50051"];
    /// let options = ConnectOptions::with_token(SecretString::from("avt_..."));
    /// let mut vault = VaultClient::connect_many(replicas, options).await?;
    /// let code = vault.reveal("alice@sina.com", "sender").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_many<I, E>(endpoints: I, options: ConnectOptions) -> Result<Self, Error>
    where
        I: IntoIterator<Item = E>,
        E: Into<String>,
    {
        let (channels, token) = options.channels(endpoints.into_iter().map(Into::into).collect()).await?;
        let mut channels = channels.into_iter();
        let first = channels.next().ok_or_else(|| Error::InvalidArgument { message: "no endpoint given".into() })?;
        Ok(Self::build(first, channels.collect(), token))
    }

    fn build(first: Channel, rest: Vec<Channel>, token: BearerToken) -> Self {
        let channels = std::iter::once(first.clone()).chain(rest).collect();
        Self::assemble(first, channels, token, std::sync::Arc::default())
    }

    /// The clients over `channels` (`first` among them) sending `token`.
    fn assemble(
        first: Channel,
        channels: std::sync::Arc<[Channel]>,
        token: BearerToken,
        next: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) -> Self {
        let client = |channel: &Channel| AuthCodeVaultClient::with_interceptor(channel.clone(), token.clone());
        let (inner, replicas) = (client(&first), channels.iter().map(client).collect());
        Self { inner, replicas, first, channels, next, token }
    }

    /// The client of replica `i` (modulo their number).
    pub(crate) fn replica(&self, i: usize) -> Inner {
        self.replicas.get(i % self.replicas.len().max(1)).unwrap_or(&self.inner).clone()
    }

    /// How many replicas, and the one this call starts at.
    pub(crate) fn turn(&self) -> (usize, usize) {
        (self.replicas.len(), self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }

    /// A client over a channel the caller built (its own TLS, load balancing or interceptors
    /// outside); `token`, if any, is sent on every call.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let channel = tonic::transport::Channel::from_static("http://127.0.0.1:50051").connect().await?;
    /// let vault = vault_client::VaultClient::from_channel(channel, None)?;
    /// # Ok(()) }
    /// ```
    pub fn from_channel(channel: Channel, token: Option<&SecretString>) -> Result<Self, Error> {
        let token = token.map(connect::bearer).transpose()?;
        Ok(Self::build(channel, Vec::new(), BearerToken { token, timeout: None }))
    }

    /// The same connection with a deadline on each call made through the copy (sent to the vault
    /// as `grpc-timeout`, so it stops work the caller gave up on).
    ///
    /// ```no_run
    /// # async fn demo(vault: &vault_client::VaultClient) -> Result<(), vault_client::Error> {
    /// let code = vault.with_timeout(std::time::Duration::from_millis(200)).reveal("alice@sina.com", "sender").await?;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn with_timeout(&self, timeout: std::time::Duration) -> Self {
        let token = BearerToken { timeout: Some(timeout), ..self.token.clone() };
        Self::assemble(self.first.clone(), self.channels.clone(), token, self.next.clone())
    }

    /// The generated client (with the token attached) of the first replica, for raw
    /// `tonic::Status` handling.
    pub fn raw(&mut self) -> &mut Inner {
        &mut self.inner
    }

    /// Binds `code` to (mailbox, client) after the provider accepted it (admin).
    ///
    /// ```no_run
    /// # async fn demo(vault: &mut vault_client::VaultClient) -> Result<(), vault_client::Error> {
    /// use vault_client::{Error, SecretString};
    /// match vault.bind("alice@sina.com", "sender", SecretString::from("abcd1234efgh5678")).await {
    ///     Ok(r) => println!("bound, version {}: {}", r.credential.version, r.probe.server_response),
    ///     Err(Error::ProbeRejected { hint, .. }) => eprintln!("Sina refused it: {hint}"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn bind(&mut self, mailbox: &str, client: &str, code: SecretString) -> Result<Bound, Error> {
        let req = proto::BindRequest {
            mailbox: mailbox.to_owned(),
            client: client.to_owned(),
            auth_code: code.expose_secret().to_owned(),
            request_id: retry::request_id(),
        };
        let id = req.request_id.clone();
        retry::write(self, req, &id, |mut c, r| async move { c.bind(r).await }).await?.try_into()
    }

    /// Fetches the plaintext code for (mailbox, client) and the provider's servers (client
    /// token of that client).
    ///
    /// ```no_run
    /// # async fn demo(vault: &mut vault_client::VaultClient) -> Result<(), vault_client::Error> {
    /// use secrecy::ExposeSecret;
    /// let r = vault.reveal("alice@sina.com", "sender").await?;
    /// let (host, port, password) = (r.imap_host, r.imap_port, r.code.expose_secret().to_owned());
    /// # Ok(()) }
    /// ```
    pub async fn reveal(&mut self, mailbox: &str, client: &str) -> Result<Revealed, Error> {
        let req = proto::RevealRequest { mailbox: mailbox.to_owned(), client: client.to_owned() };
        let r = retry::read(self, req, |mut c, r| async move { c.reveal(r).await }).await?;
        let port = |p: u32| u16::try_from(p).unwrap_or(0);
        Ok(Revealed {
            code: SecretString::from(r.auth_code),
            version: r.version,
            imap_port: port(r.imap_port),
            imap_host: r.imap_host,
            smtp_port: port(r.smtp_port),
            smtp_host: r.smtp_host,
        })
    }

    /// Replaces the code after the provider accepted `new_code` (admin). `expected_version` 0
    /// skips the version check. The response says whether the provider still accepts the old
    /// code.
    ///
    /// ```no_run
    /// # async fn demo(vault: &mut vault_client::VaultClient) -> Result<(), vault_client::Error> {
    /// use vault_client::{ProbeOutcome, SecretString};
    /// let r = vault.rotate("alice@sina.com", "sender", SecretString::from("ijkl9012mnop3456"), 1).await?;
    /// if let Some(p) = r.previous_code_probe.filter(|p| p.outcome == ProbeOutcome::Accepted) {
    ///     // Says what to do: delete the old code in webmail, or not if another client uses it.
    ///     println!("{}", p.hint);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn rotate(
        &mut self,
        mailbox: &str,
        client: &str,
        new_code: SecretString,
        expected_version: u64,
    ) -> Result<Rotated, Error> {
        let req = proto::RotateRequest {
            mailbox: mailbox.to_owned(),
            client: client.to_owned(),
            new_auth_code: new_code.expose_secret().to_owned(),
            expected_version,
            request_id: retry::request_id(),
        };
        let id = req.request_id.clone();
        retry::write(self, req, &id, |mut c, r| async move { c.rotate(r).await }).await?.try_into()
    }

    /// Destroys the code and keeps a tombstone (admin); then says whether the provider still
    /// accepts it.
    ///
    /// ```no_run
    /// # async fn demo(vault: &mut vault_client::VaultClient) -> Result<(), vault_client::Error> {
    /// let r = vault.revoke("alice@sina.com", "foxmail", "laptop retired").await?;
    /// if let Some(p) = r.probe { println!("{}", p.hint); }
    /// # Ok(()) }
    /// ```
    pub async fn revoke(&mut self, mailbox: &str, client: &str, reason: &str) -> Result<Revoked, Error> {
        let req = proto::RevokeRequest {
            mailbox: mailbox.to_owned(),
            client: client.to_owned(),
            reason: reason.to_owned(),
            request_id: retry::request_id(),
        };
        let id = req.request_id.clone();
        retry::write(self, req, &id, |mut c, r| async move { c.revoke(r).await }).await?.try_into()
    }

    /// Re-probes the stored code and records a verdict (admin); an outage is only reported.
    ///
    /// ```no_run
    /// # async fn demo(vault: &mut vault_client::VaultClient) -> Result<(), vault_client::Error> {
    /// let r = vault.verify("alice@sina.com", "sender").await?;
    /// println!("{:?}: {}", r.probe.outcome, r.probe.hint);
    /// # Ok(()) }
    /// ```
    pub async fn verify(&mut self, mailbox: &str, client: &str) -> Result<Verified, Error> {
        let req = proto::VerifyRequest { mailbox: mailbox.to_owned(), client: client.to_owned() };
        // Not resent: a Verify that got through probes the provider, and a second one would again.
        let (_, turn) = self.turn();
        self.replica(turn).verify(req).await?.into_inner().try_into()
    }

    /// A binding's metadata, never its code (admin, or the client for its own pairs).
    ///
    /// ```no_run
    /// # async fn demo(vault: &mut vault_client::VaultClient) -> Result<(), vault_client::Error> {
    /// let c = vault.get("alice@sina.com", "sender").await?;
    /// println!("version {} last verified {:?}", c.version, c.last_verified_at);
    /// # Ok(()) }
    /// ```
    pub async fn get(&mut self, mailbox: &str, client: &str) -> Result<Credential, Error> {
        let req = proto::GetCredentialRequest { mailbox: mailbox.to_owned(), client: client.to_owned() };
        Ok(retry::read(self, req, |mut c, r| async move { c.get_credential(r).await }).await?.into())
    }

    /// Rotates the data key (admin): every code is re-sealed under a new key and the old key
    /// is deleted before this returns. If the call's deadline passes first, the rotation goes
    /// on in the server; calling again joins it.
    ///
    /// ```no_run
    /// # async fn demo(vault: &mut vault_client::VaultClient) -> Result<(), vault_client::Error> {
    /// let r = vault.rotate_data_key().await?;
    /// println!("key {} now; {} codes re-sealed, keys {:?} deleted", r.active_key_id, r.codes_resealed, r.retired_key_ids);
    /// # Ok(()) }
    /// ```
    pub async fn rotate_data_key(&mut self) -> Result<DataKeyRotated, Error> {
        Ok(self.inner.rotate_data_key(proto::RotateDataKeyRequest {}).await?.into_inner().into())
    }
}
