//! Idempotent writes. A Bind, Rotate or Revoke that carries a request id and changes a binding
//! is remembered, in the same transaction, with its answer for [`KEEP_FOR`]. Under the pair's
//! lock, before any other check or probe, a call whose id is remembered gets that answer again
//! if it is the same request (same RPC, pair, code, version, reason), and INVALID_ARGUMENT if
//! not. Calls that changed nothing are not remembered: their retry runs again.
//!
//! The request is kept only as an HMAC (the fingerprint) under a key derived from the data key
//! active then, and the row carries a MAC under the same key. After a data-key rotation retired
//! that key, a retry with the id is refused (REQUEST_ID_UNVERIFIABLE), never run a second time.

use std::time::Duration;

use prost::Message;
use zeroize::Zeroizing;

use super::{Vault, VaultError};
use crate::caller::Caller;
use crate::crypto::{Key, Keyring, hmac, verify_hmac};
use crate::ids::RequestId;
use crate::store::{CredentialRow, Millis, RecordedAnswer, RequestKey, RequestRecord, StoredRequest};

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

/// What a request row's MAC covers, so an edited answer, or a row moved to another id, is refused.
fn row_fields<'a>(id: &'a RequestKey, at: &'a [u8; 8], fingerprint: &'a [u8], answer: &'a [u8]) -> [&'a [u8]; 6] {
    [id.caller.as_bytes(), id.request_id.as_bytes(), id.rpc.as_bytes(), fingerprint, answer, at]
}

fn row_mac(key: &Key, id: &RequestKey, fingerprint: &[u8], answer: &[u8]) -> Vec<u8> {
    hmac(key, &row_fields(id, &id.created_at.to_be_bytes(), fingerprint, answer)).to_vec()
}

/// A request id to remember once the write commits: what identifies the request.
pub(super) struct Pending {
    caller: String,
    id: RequestId,
    rpc: &'static str,
    /// The request's fields, fingerprinted at commit under the key active then.
    fields: Vec<Zeroizing<Vec<u8>>>,
}

/// A request remembered by a commit: what its answer's later update needs.
pub(super) struct Remembered {
    key: Key,
    id: RequestKey,
    fingerprint: Vec<u8>,
}

impl Remembered {
    fn answer(&self, bytes: Vec<u8>) -> RecordedAnswer {
        let mac = row_mac(&self.key, &self.id, &self.fingerprint, &bytes);
        RecordedAnswer { bytes, mac }
    }
}

impl Pending {
    /// The record to commit with the write (`answer` makes the response from the row), and what
    /// a later update of the answer needs.
    pub(super) fn record<M: Message + 'static>(
        self,
        ring: &Keyring,
        now: Millis,
        answer: impl FnOnce(&CredentialRow) -> M + Send + 'static,
    ) -> Result<(RequestRecord, Remembered), VaultError> {
        let key_id = ring.active_key_id();
        let key = ring.request_mac_key(key_id)?;
        let fingerprint = hmac(&key, &self.field_refs()).to_vec();
        let id =
            RequestKey { caller: self.caller, request_id: self.id.as_str().to_owned(), rpc: self.rpc, created_at: now };
        let remembered = Remembered { key, id, fingerprint };
        let (mac_key, mac_id, mac_fingerprint) =
            (remembered.key.clone(), remembered.id.clone(), remembered.fingerprint.clone());
        let record = RequestRecord {
            caller: remembered.id.caller.clone(),
            request_id: remembered.id.request_id.clone(),
            rpc: self.rpc,
            fingerprint: remembered.fingerprint.clone(),
            key_id,
            now,
            forget_before: forget_before(now),
            answer: Box::new(move |row| {
                let bytes = answer(row).encode_to_vec();
                let mac = row_mac(&mac_key, &mac_id, &mac_fingerprint, &bytes);
                RecordedAnswer { bytes, mac }
            }),
        };
        Ok((record, remembered))
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

/// Whether a remembered request row is the one this vault wrote for (`caller`, `request_id`):
/// its MAC verifies under the key it names. `false` too if that key is not held.
pub fn request_row_is_authentic(ring: &Keyring, caller: &str, request_id: &str, found: &StoredRequest) -> bool {
    let Ok(key) = ring.request_mac_key(found.key_id) else { return false };
    let Some(rpc) = ["Bind", "Rotate", "Revoke"].into_iter().find(|r| *r == found.rpc) else { return false };
    let id =
        RequestKey { caller: caller.to_owned(), request_id: request_id.to_owned(), rpc, created_at: found.created_at };
    let at = id.created_at.to_be_bytes();
    verify_hmac(&key, &row_fields(&id, &at, &found.fingerprint, &found.answer.bytes), &found.answer.mac)
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
            // Expired records are deleted by the commit that would reuse the id.
            Some(found) if found.created_at >= forget_before(self.clock.now_millis()) => {
                self.check_same(&found, &pending)?;
                tracing::info!(request_id = pending.id.as_str(), "replayed the answer of an earlier call");
                Ok(Prior::Replay(found.answer.bytes))
            }
            _ => Ok(Prior::Run(Some(pending))),
        }
    }

    /// Whether `found` is `pending`'s request, remembered intact.
    fn check_same(&self, found: &StoredRequest, pending: &Pending) -> Result<(), VaultError> {
        let ring = self.keys.load();
        let key = ring.request_mac_key(found.key_id).map_err(|_| VaultError::RequestUnverifiable)?;
        if !request_row_is_authentic(&ring, &pending.caller, pending.id.as_str(), found) {
            return Err(VaultError::RequestDamaged);
        }
        if found.rpc == pending.rpc && verify_hmac(&key, &pending.field_refs(), &found.fingerprint) {
            Ok(())
        } else {
            Err(VaultError::InvalidField {
                field: "request_id",
                reason: "was already used for a different request; use a new id for a new request".into(),
            })
        }
    }

    /// Records what a probe after the commit found in the remembered answer (best effort: the
    /// change itself is committed; a replay then lacks only that probe).
    pub(super) async fn complete_answer(&self, remembered: Option<Remembered>, bytes: Vec<u8>) {
        let Some(remembered) = remembered else { return };
        let answer = remembered.answer(bytes);
        if let Err(e) = self.store.update_request_answer(remembered.id, answer).await {
            tracing::warn!(error = %e, "could not remember the follow-up probe of an idempotent call");
        }
    }
}
