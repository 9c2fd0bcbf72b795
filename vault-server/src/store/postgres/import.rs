//! Moving a vault into an empty PostgreSQL database: every row as stored (ciphertext stays
//! sealed, key wrappings stay wrapped), in one transaction.

use std::future::Future;

use super::PgStore;
use super::rows::{INSERT_AUDIT, audit_values, refs};
use crate::store::{AuditEvent, CredentialRow, CredentialState, Millis, StoreError, TokenRow, UnlockMaterial};

/// A batch of rows read from the source vault.
pub enum Batch {
    Credentials(Vec<CredentialRow>),
    Tokens(Vec<TokenRow>),
    /// Oldest first, so ids keep the source's order.
    Audit(Vec<AuditEvent>),
}

/// What was moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    pub active: u64,
    pub revoked: u64,
    pub tokens: u64,
    pub audit_events: u64,
}

impl PgStore {
    /// Stores `material`, then every batch `next` yields until `None`, in one transaction:
    /// a failure leaves the database empty. `AlreadyExists` if it holds a vault.
    pub async fn import_vault<F, Fut>(
        &self,
        material: &UnlockMaterial,
        now: Millis,
        mut next: F,
    ) -> Result<Moved, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<Batch>, StoreError>>,
    {
        let mut conn = self.pool.get().await?;
        let tx = conn.transaction().await?;
        super::create_in(&tx, material, now).await?;
        let mut moved = Moved::default();
        let credential = tx
            .prepare_cached(&format!(
                "INSERT INTO credentials ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
                super::rows::COLUMNS
            ))
            .await?;
        let token = tx
            .prepare_cached(
                "INSERT INTO tokens (id, role, digest, key_id, mac, created_at, last_used_at, revoked_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .await?;
        let audit = tx.prepare_cached(INSERT_AUDIT).await?;
        while let Some(batch) = next().await? {
            match batch {
                Batch::Credentials(rows) => {
                    for r in rows {
                        let state: i16 = if r.state == CredentialState::Active { 1 } else { 2 };
                        let code = r.code.as_ref();
                        let key_id = code.map(|c| i64::from(c.key_id));
                        let nonce = code.map(|c| c.sealed.nonce.to_vec());
                        let ciphertext = code.map(|c| c.sealed.ciphertext.clone());
                        let generation = code.and_then(|c| c.generation.map(|g| g.to_vec()));
                        let version = i64::try_from(r.version).unwrap_or(i64::MAX);
                        let outcome = r.last_probe_outcome.map(|o| o as i32);
                        tx.execute(
                            &credential,
                            &[
                                &r.mailbox,
                                &r.client,
                                &r.provider,
                                &state,
                                &version,
                                &key_id,
                                &nonce,
                                &ciphertext,
                                &r.created_at,
                                &r.rotated_at,
                                &r.revoked_at,
                                &r.revoke_reason,
                                &r.last_used_at,
                                &r.last_verified_at,
                                &outcome,
                                &generation,
                            ],
                        )
                        .await?;
                        if state == 1 {
                            moved.active += 1;
                        } else {
                            moved.revoked += 1;
                        }
                    }
                }
                Batch::Tokens(rows) => {
                    for t in rows {
                        tx.execute(
                            &token,
                            &[
                                &t.id,
                                &t.role,
                                &t.digest,
                                &i64::from(t.key_id),
                                &t.mac,
                                &t.created_at,
                                &t.last_used_at,
                                &t.revoked_at,
                            ],
                        )
                        .await?;
                        moved.tokens += 1;
                    }
                }
                Batch::Audit(events) => {
                    for e in events {
                        let values = audit_values(&e);
                        tx.execute(&audit, &refs(&values)).await?;
                        moved.audit_events += 1;
                    }
                }
            }
        }
        self.finish(tx).await?;
        Ok(moved)
    }
}
