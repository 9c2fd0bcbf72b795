//! Key material in the SQLite store: passphrase re-wrapping, and the steps of a data-key
//! rotation (add a key, re-seal codes and re-key tokens in batches, delete the old keys).

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::{Db, rows};
use crate::crypto::{KeyId, Salt, WrappedKey};
use crate::store::{CredentialRow, DataKeyInfo, Millis, Reseal, Retirement, StoreError, TokenRekey, UnlockMaterial};

fn key_ids(tx: &rusqlite::Transaction<'_>) -> Result<Vec<KeyId>, StoreError> {
    let mut stmt = tx.prepare("SELECT key_id FROM keyring ORDER BY key_id")?;
    let ids = stmt.query_map([], |r| r.get(0))?.collect::<Result<Vec<KeyId>, _>>()?;
    Ok(ids)
}

/// Active rows sealed under a key older than `active`, by the index the rotation walks.
pub(super) fn sealed_before_on(
    conn: &rusqlite::Connection,
    active: KeyId,
    limit: usize,
) -> Result<Vec<CredentialRow>, StoreError> {
    let sql = format!(
        "SELECT {} FROM credentials INDEXED BY credentials_by_key WHERE state = 1 AND key_id < ?1 LIMIT ?2",
        rows::COLUMNS
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![active, i64::try_from(limit).unwrap_or(i64::MAX)], rows::read_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

impl Db {
    /// Replaces the salt, KDF parameters and wrapped keys in one transaction (a passphrase
    /// change), only if they are still `before`, key set included (two changes at once, or a
    /// key added by a rotation meanwhile: `Conflict`, so no key is left wrapped under a KEK no
    /// passphrase derives); then truncates the WAL so the old wrapping leaves the live files.
    pub fn replace_unlock_material(
        &self,
        before: &UnlockMaterial,
        material: &UnlockMaterial,
    ) -> Result<(), StoreError> {
        {
            let mut conn = self.writer()?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let changed = tx.execute(
                "UPDATE vault_meta SET kdf_salt = ?1, kdf_m_kib = ?2, kdf_t = ?3, kdf_p = ?4 WHERE id = 1 AND kdf_salt = ?5",
                params![&material.salt.0[..], material.params.m_kib, material.params.t, material.params.p, &before.salt.0[..]],
            )?;
            let expected: Vec<KeyId> = material.keys.iter().map(|k| k.key_id).collect();
            if changed != 1 || key_ids(&tx)? != expected {
                return Err(StoreError::Conflict);
            }
            for k in &material.keys {
                let old = before.keys.iter().find(|b| b.key_id == k.key_id).ok_or(StoreError::Conflict)?;
                let changed = tx.execute(
                    "UPDATE keyring SET nonce = ?2, wrapped_dek = ?3 WHERE key_id = ?1 AND nonce = ?4",
                    params![k.key_id, &k.sealed.nonce[..], &k.sealed.ciphertext, &old.sealed.nonce[..]],
                )?;
                if changed != 1 {
                    return Err(StoreError::Conflict);
                }
            }
            tx.commit()?;
        }
        self.shred_wal();
        Ok(())
    }

    pub fn data_keys(&self) -> Result<Vec<DataKeyInfo>, StoreError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached("SELECT key_id, created_at FROM keyring ORDER BY key_id")?;
            let keys = stmt.query_map([], |r| Ok(DataKeyInfo { key_id: r.get(0)?, created_at: r.get(1)? }))?;
            Ok(keys.collect::<Result<Vec<_>, _>>()?)
        })
    }

    pub fn add_data_key(&self, salt: &Salt, key: &WrappedKey, now: Millis) -> Result<(), StoreError> {
        let mut conn = self.writer()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current: Option<Vec<u8>> =
            tx.query_row("SELECT kdf_salt FROM vault_meta WHERE id = 1", [], |r| r.get(0)).optional()?;
        if current.as_deref() != Some(&salt.0[..]) {
            return Err(StoreError::Conflict);
        }
        let inserted = tx.execute(
            "INSERT INTO keyring (key_id, nonce, wrapped_dek, created_at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
            params![key.key_id, &key.sealed.nonce[..], &key.sealed.ciphertext, now],
        )?;
        if inserted != 1 {
            return Err(StoreError::AlreadyExists);
        }
        tx.commit()?;
        Ok(())
    }

    pub fn sealed_before(&self, active: KeyId, limit: usize) -> Result<Vec<CredentialRow>, StoreError> {
        self.with_reader(|conn| sealed_before_on(conn, active, limit))
    }

    pub fn reseal(&self, batch: &[Reseal]) -> Result<usize, StoreError> {
        let mut conn = self.writer()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut done = 0;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE credentials SET key_id = ?1, nonce = ?2, ciphertext = ?3, generation = ?4 \
                 WHERE mailbox = ?5 AND client = ?6 AND state = 1 AND version = ?7 AND key_id = ?8 AND ciphertext = ?9",
            )?;
            for r in batch {
                done += stmt.execute(params![
                    r.code.key_id,
                    &r.code.sealed.nonce[..],
                    &r.code.sealed.ciphertext,
                    r.code.generation.as_ref().map(|g| &g[..]),
                    r.mailbox,
                    r.client,
                    i64::try_from(r.version).unwrap_or(i64::MAX),
                    r.old_key_id,
                    r.old_ciphertext
                ])?;
            }
        }
        tx.commit()?;
        Ok(done)
    }

    pub fn rekey_tokens(&self, batch: &[TokenRekey]) -> Result<usize, StoreError> {
        let mut conn = self.writer()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut done = 0;
        {
            let mut stmt = tx
                .prepare_cached("UPDATE tokens SET key_id = ?1, mac = ?2 WHERE id = ?3 AND key_id = ?4 AND mac = ?5")?;
            for t in batch {
                done += stmt.execute(params![t.key_id, t.mac, t.id, t.old_key_id, t.old_mac])?;
            }
        }
        tx.commit()?;
        Ok(done)
    }

    pub fn retire_data_keys(&self, active: KeyId, invalid_tokens: &[String]) -> Result<Retirement, StoreError> {
        let mut retirement = {
            let mut conn = self.writer()?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let pending_codes: i64 = tx.query_row(
                "SELECT count(*) FROM credentials INDEXED BY credentials_by_key WHERE state = 1 AND key_id < ?1",
                [active],
                |r| r.get(0),
            )?;
            // Revoked rows and rows the caller found without a valid MAC stay refused under the
            // new key, and no longer pin the old one.
            tx.execute("UPDATE tokens SET key_id = ?1 WHERE key_id < ?1 AND mac = X''", [active])?;
            {
                let mut stmt = tx.prepare_cached("UPDATE tokens SET key_id = ?1 WHERE key_id < ?1 AND id = ?2")?;
                for id in invalid_tokens {
                    stmt.execute(params![active, id])?;
                }
            }
            // Any other row under an old key was minted after the caller re-keyed: keep the keys.
            let pending_tokens: i64 =
                tx.query_row("SELECT count(*) FROM tokens WHERE key_id < ?1", [active], |r| r.get(0))?;
            if pending_codes > 0 || pending_tokens > 0 {
                tx.commit()?;
                return Ok(Retirement {
                    retired: Vec::new(),
                    pending_codes: u64::try_from(pending_codes).unwrap_or(0),
                    pending_tokens: u64::try_from(pending_tokens).unwrap_or(0),
                    destroyed: true,
                });
            }
            let retired: Vec<KeyId> = key_ids(&tx)?.into_iter().filter(|id| *id < active).collect();
            tx.execute("DELETE FROM keyring WHERE key_id < ?1", [active])?;
            tx.commit()?;
            Retirement { retired, pending_codes: 0, pending_tokens: 0, destroyed: true }
        };
        if !retirement.retired.is_empty() {
            retirement.destroyed = self.shred_wal();
        }
        Ok(retirement)
    }
}
