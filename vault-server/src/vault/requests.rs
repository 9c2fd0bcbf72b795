//! Idempotent writes. A Bind, Rotate or Revoke that carries a request id and changes a binding
//! is remembered, in the same transaction, with its answer for [`KEEP_FOR`]. Under the pair's
//! lock, before any probe, a call whose id is remembered gets that answer again if it is the
//! same request (same RPC, pair, code, version, reason), and INVALID_ARGUMENT if not. Calls that
//! changed nothing are not remembered: their retry runs again.

use std::time::Duration;

use prost::Message;
use zeroize::Zeroizing;

use super::{Vault, VaultError};
use crate::caller::Caller;
use crate::crypto::{Keyring, hmac, verify_hmac};
use crate::ids::RequestId;
use crate::store::{CredentialRow, Millis, RequestRecord, StoredRequest};

/// How long a request is remembered.
pub const KEEP_FOR: Duration = Duration::from_secs(24 * 3600);

/// A write's answer: made now, or remembered from an earlier call with the same request id
/// (the encoded response message).
#[derive(Debug)]
pub enum Answer<T> {
    Done(T),
    Replayed(Vec<u8>),
}

impl<T> Answer<T> {
    /// The answer made now, if it was.
    pub fn done(self) -> Option<T> {
        match self {
            Self::Done(t) => Some(t),
            Self::Replayed(_) => None,
        }
    }
}

/// A request id to remember once the write commits: what identifies the request.
pub(super) struct Pending {
    caller: String,
    id: RequestId,
    rpc: &'static str,
    /// The request's fields, fingerprinted at commit under the key active then.
    fields: Vec<Zeroizing<Vec<u8>>>,
}

impl Pending {
    /// The record to commit with the write; `answer` encodes the response from the row.
    pub(super) fn record<M: Message + 'static>(
        self,
        ring: &Keyring,
        now: Millis,
        answer: impl FnOnce(&CredentialRow) -> M + Send + 'static,
    ) -> Result<RequestRecord, VaultError> {
        let key_id = ring.active_key_id();
        let fingerprint = hmac(&ring.request_mac_key(key_id)?, &self.field_refs()).to_vec();
        Ok(RequestRecord {
            caller: self.caller,
            request_id: self.id.as_str().to_owned(),
            rpc: self.rpc,
            fingerprint,
            key_id,
            now,
            forget_before: forget_before(now),
            answer: Box::new(move |row| answer(row).encode_to_vec()),
        })
    }

    fn field_refs(&self) -> Vec<&[u8]> {
        std::iter::once(self.rpc.as_bytes()).chain(self.fields.iter().map(|f| f.as_slice())).collect()
    }
}

fn forget_before(now: Millis) -> Millis {
    now.saturating_sub(i64::try_from(KEEP_FOR.as_millis()).unwrap_or(i64::MAX))
}

/// What a request id found.
pub(super) enum Prior {
    /// Nothing remembered: run the call (remembering it if there is an id).
    Run(Option<Pending>),
    /// The same request ran before: its answer.
    Replay(Vec<u8>),
}

impl Vault {
    /// Looks `id` up for `caller`; the caller holds the pair's lock. `fields` identify the
    /// request (secrets included: they are only ever fingerprinted).
    pub(super) async fn prior(
        &self,
        caller: &Caller,
        rpc: &'static str,
        id: Option<RequestId>,
        fields: &[&[u8]],
    ) -> Result<Prior, VaultError> {
        let Some(id) = id else { return Ok(Prior::Run(None)) };
        let fields = fields.iter().map(|f| Zeroizing::new(f.to_vec())).collect();
        let pending = Pending { caller: caller.token_id.clone(), id, rpc, fields };
        let found = self.store.find_request(pending.caller.clone(), pending.id.as_str().to_owned()).await?;
        match found {
            Some(found) if found.created_at >= forget_before(self.clock.now_millis()) => {
                match self.same_request(&found, &pending) {
                    Some(true) => {
                        tracing::info!(request_id = pending.id.as_str(), "replayed the answer of an earlier call");
                        Ok(Prior::Replay(found.answer))
                    }
                    Some(false) => Err(VaultError::InvalidField {
                        field: "request_id",
                        reason: "was already used for a different request; use a new id for a new request".into(),
                    }),
                    // Its key was retired meanwhile (and the record with it): run again.
                    None => Ok(Prior::Run(Some(pending))),
                }
            }
            // Expired records are deleted by the commit that would reuse the id.
            _ => Ok(Prior::Run(Some(pending))),
        }
    }

    /// Whether `found` is `pending`'s request; `None` if its key is no longer held.
    fn same_request(&self, found: &StoredRequest, pending: &Pending) -> Option<bool> {
        let key = self.keys.load().request_mac_key(found.key_id).ok()?;
        Some(found.rpc == pending.rpc && verify_hmac(&key, &pending.field_refs(), &found.fingerprint))
    }

    /// Records what a probe after the commit found in the remembered answer (best effort: the
    /// change itself is committed; a replay then lacks only that probe).
    pub(super) async fn complete_answer(&self, caller: &Caller, id: Option<&RequestId>, answer: Vec<u8>) {
        let Some(id) = id else { return };
        if let Err(e) = self.store.update_request_answer(caller.token_id.clone(), id.as_str().to_owned(), answer).await
        {
            tracing::warn!(error = %e, "could not remember the follow-up probe of an idempotent call");
        }
    }
}
