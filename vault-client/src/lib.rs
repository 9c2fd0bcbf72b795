//! Client for authcode-vault.
//!
//! [`VaultClient`] wraps the generated stubs in [`proto`]; auth codes travel as
//! [`secrecy::SecretString`] and never appear in a Debug print.
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

mod connect;
mod error;
pub mod proto;

pub use connect::{ConnectOptions, TlsOptions};
pub use error::Error;
pub use secrecy::SecretString;

use secrecy::ExposeSecret;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use connect::BearerToken;
use proto::auth_code_vault_client::AuthCodeVaultClient;

type Inner = AuthCodeVaultClient<InterceptedService<Channel, BearerToken>>;

/// A revealed code and where to use it.
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

/// A connection to the vault.
#[derive(Debug, Clone)]
pub struct VaultClient {
    inner: Inner,
}

impl VaultClient {
    /// Connects to `endpoint` (`http://...` or, with [`TlsOptions`], `https://...`). The token,
    /// if any, is sent as `authorization: Bearer ...` on every call.
    pub async fn connect(endpoint: impl Into<String>, options: ConnectOptions) -> Result<Self, Error> {
        let (channel, token) = options.channel(endpoint.into()).await?;
        Ok(Self { inner: AuthCodeVaultClient::with_interceptor(channel, token) })
    }

    /// The generated client (with the token attached), for calls this wrapper does not cover.
    pub fn raw(&mut self) -> &mut Inner {
        &mut self.inner
    }

    /// Binds `code` to (mailbox, client) after the provider accepted it.
    pub async fn bind(
        &mut self,
        mailbox: &str,
        client: &str,
        code: SecretString,
    ) -> Result<proto::BindResponse, Error> {
        let req = proto::BindRequest {
            mailbox: mailbox.to_owned(),
            client: client.to_owned(),
            auth_code: code.expose_secret().to_owned(),
        };
        Ok(self.inner.bind(req).await?.into_inner())
    }

    /// Fetches the plaintext code for (mailbox, client).
    pub async fn reveal(&mut self, mailbox: &str, client: &str) -> Result<Revealed, Error> {
        let req = proto::RevealRequest { mailbox: mailbox.to_owned(), client: client.to_owned() };
        let r = self.inner.reveal(req).await?.into_inner();
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

    /// Replaces the code after the provider accepted `new_code`. `expected_version` 0 skips the
    /// version check. The response says whether the provider still accepts the old code.
    pub async fn rotate(
        &mut self,
        mailbox: &str,
        client: &str,
        new_code: SecretString,
        expected_version: u64,
    ) -> Result<proto::RotateResponse, Error> {
        let req = proto::RotateRequest {
            mailbox: mailbox.to_owned(),
            client: client.to_owned(),
            new_auth_code: new_code.expose_secret().to_owned(),
            expected_version,
        };
        Ok(self.inner.rotate(req).await?.into_inner())
    }

    /// Destroys the code and keeps a tombstone; then says whether the provider still accepts it.
    pub async fn revoke(&mut self, mailbox: &str, client: &str, reason: &str) -> Result<proto::RevokeResponse, Error> {
        let req =
            proto::RevokeRequest { mailbox: mailbox.to_owned(), client: client.to_owned(), reason: reason.to_owned() };
        Ok(self.inner.revoke(req).await?.into_inner())
    }

    /// Re-probes the stored code and records the outcome.
    pub async fn verify(&mut self, mailbox: &str, client: &str) -> Result<proto::VerifyResponse, Error> {
        let req = proto::VerifyRequest { mailbox: mailbox.to_owned(), client: client.to_owned() };
        Ok(self.inner.verify(req).await?.into_inner())
    }

    /// One page of bindings' metadata; pass the returned `next_page_token` for the next page.
    pub async fn list(
        &mut self,
        request: proto::ListCredentialsRequest,
    ) -> Result<proto::ListCredentialsResponse, Error> {
        Ok(self.inner.list_credentials(request).await?.into_inner())
    }

    /// A binding's metadata.
    pub async fn get(&mut self, mailbox: &str, client: &str) -> Result<proto::Credential, Error> {
        let req = proto::GetCredentialRequest { mailbox: mailbox.to_owned(), client: client.to_owned() };
        Ok(self.inner.get_credential(req).await?.into_inner())
    }
}
