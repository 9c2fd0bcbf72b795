//! The vault's domain service: validate → probe → short write transaction. No database
//! transaction is ever open while a probe runs.

mod clock;
mod error;

pub use clock::{Clock, SystemClock};
pub use error::VaultError;

use std::sync::Arc;

use crate::crypto::Keyring;
use crate::ids::{ClientId, Mailbox};
use crate::probe::{ProbeOutcome, ProbeReport, ProbeRequest, Prober};
use crate::provider::{Provider, Registry};
use crate::secret::AuthCode;
use crate::store::{
    AuditEvent, CredentialRow, CredentialState, ListQuery, NewBinding, Store, StoredCode,
};

/// Default and largest page sizes for listings.
pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 1000;

/// A revealed code with where to use it. Debug shows the code redacted.
#[derive(Debug)]
pub struct Revealed {
    pub code: AuthCode,
    pub version: u64,
    pub provider: Arc<Provider>,
}

/// The vault: store, keys, providers and prober.
pub struct Vault {
    store: Arc<dyn Store>,
    keyring: Keyring,
    registry: Registry,
    prober: Arc<dyn Prober>,
    clock: Arc<dyn Clock>,
}

/// Runs blocking storage work off the async workers; a panic there is re-raised here.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, VaultError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => Ok(v),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(VaultError::Internal(format!(
            "blocking task cancelled: {e}"
        ))),
    }
}

impl Vault {
    pub fn new(
        store: Arc<dyn Store>,
        keyring: Keyring,
        registry: Registry,
        prober: Arc<dyn Prober>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            store,
            keyring,
            registry,
            prober,
            clock,
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn provider_for(&self, mailbox: &Mailbox) -> Result<Arc<Provider>, VaultError> {
        self.registry
            .lookup(mailbox.domain())
            .cloned()
            .ok_or_else(|| VaultError::UnknownProvider {
                domain: mailbox.domain().to_owned(),
            })
    }

    /// Checks the format, probes, and stores the code only if the provider accepted it.
    pub async fn bind(
        &self,
        caller: &str,
        mailbox: Mailbox,
        client: ClientId,
        code: AuthCode,
    ) -> Result<(CredentialRow, ProbeReport), VaultError> {
        let provider = self.provider_for(&mailbox)?;
        if !provider.code_format.accepts(&code) {
            return Err(VaultError::BadCodeFormat {
                provider: provider.name.clone(),
                hint: provider.format_hint(),
            });
        }
        // Cheap check first: an active pair needs no probe to be refused.
        match self.store.get(mailbox.as_str(), client.as_str()) {
            Ok(row) if row.state == CredentialState::Active => {
                return Err(VaultError::AlreadyExists);
            }
            Ok(_) | Err(crate::store::StoreError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
        let report = self
            .prober
            .probe(ProbeRequest {
                provider: &provider,
                endpoint: &provider.imap,
                login: mailbox.as_str(),
                code: &code,
            })
            .await;
        if report.outcome != ProbeOutcome::Accepted {
            return Err(VaultError::ProbeFailed(report));
        }
        let (key_id, sealed) = self.keyring.seal_code(
            mailbox.as_str(),
            client.as_str(),
            1,
            code.expose().as_bytes(),
        );
        drop(code);
        let store = self.store.clone();
        let caller = caller.to_owned();
        let now = self.clock.now_millis();
        let provider_id = provider.id.clone();
        let row = blocking(move || {
            let audit = AuditEvent {
                at: now,
                caller: &caller,
                rpc: "Bind",
                mailbox: mailbox.as_str(),
                client: client.as_str(),
                outcome: "OK",
                probe_outcome: Some(ProbeOutcome::Accepted),
            };
            let new = NewBinding {
                mailbox: &mailbox,
                client: &client,
                provider: &provider_id,
                code: StoredCode { key_id, sealed },
                now,
                probe_outcome: ProbeOutcome::Accepted,
            };
            store.bind(new, &audit)
        })
        .await??;
        Ok((row, report))
    }

    /// Decrypts a pair's code. Runs on the caller's thread: a point read and a decrypt.
    pub fn reveal(&self, mailbox: &Mailbox, client: &ClientId) -> Result<Revealed, VaultError> {
        let row = self.store.get(mailbox.as_str(), client.as_str())?;
        let Some(stored) = row
            .code
            .as_ref()
            .filter(|_| row.state == CredentialState::Active)
        else {
            return Err(VaultError::Revoked);
        };
        let plain = self.keyring.open_code(
            stored.key_id,
            mailbox.as_str(),
            client.as_str(),
            row.version,
            &stored.sealed.nonce,
            &stored.sealed.ciphertext,
        )?;
        let text = std::str::from_utf8(&plain).map_err(|_| VaultError::DataLoss)?;
        let provider = self.registry.by_id(&row.provider).cloned().ok_or_else(|| {
            VaultError::Internal(format!(
                "binding refers to unknown provider {}",
                row.provider
            ))
        })?;
        Ok(Revealed {
            code: AuthCode::new(text),
            version: row.version,
            provider,
        })
    }

    /// One binding's metadata.
    pub fn get(&self, mailbox: &Mailbox, client: &ClientId) -> Result<CredentialRow, VaultError> {
        Ok(self.store.get(mailbox.as_str(), client.as_str())?)
    }

    /// A page of metadata; the returned key is where the next page starts.
    pub async fn list(
        &self,
        mut query: ListQuery,
    ) -> Result<(Vec<CredentialRow>, Option<(String, String)>), VaultError> {
        let page = query.limit;
        query.limit = page + 1;
        let store = self.store.clone();
        let mut rows = blocking(move || store.list(&query)).await??;
        let next = if rows.len() > page {
            rows.truncate(page);
            rows.last().map(|r| (r.mailbox.clone(), r.client.clone()))
        } else {
            None
        };
        Ok((rows, next))
    }
}
