//! Work on the whole file rather than on one binding: WAL truncation after a destroying change,
//! passphrase re-wrapping, online backups, and re-sealing legacy rows.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rusqlite::{TransactionBehavior, params};

use super::{Db, rows};
use crate::store::{CredentialRow, StoreError, StoredCode, UnlockMaterial};

impl Db {
    /// Replaces the salt, KDF parameters and wrapped keys in one transaction (a passphrase
    /// change), only if they are still `before` (two changes at once: the second one fails with
    /// `Conflict`, so no one's new passphrase is silently lost); then truncates the WAL so the
    /// old wrapping leaves the live files.
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
            if changed != 1 {
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
}

impl Db {
    /// A consistent online copy into `target`, which must not exist: `VACUUM INTO` from one read
    /// snapshot, so the copy holds live rows only (no free pages, no WAL), created 0600.
    pub fn backup_into(&self, target: &Path) -> Result<(), StoreError> {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(target)
            .map_err(|e| StoreError::Unavailable(format!("cannot create {}: {e}", target.display())))?;
        let text = target.to_str().ok_or_else(|| StoreError::Unavailable("the backup path is not UTF-8".into()))?;
        let done = self.with_reader(|conn| Ok(conn.execute("VACUUM INTO ?1", [text])?));
        if done.is_err() {
            let _ = std::fs::remove_file(target);
        }
        done?;
        // The file was opened again by name: check that what is there now is the copy, private.
        let meta = std::fs::symlink_metadata(target)
            .map_err(|e| StoreError::Unavailable(format!("the backup {} vanished: {e}", target.display())))?;
        if !meta.is_file()
            || meta.len() == 0
            || std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o077 != 0
        {
            return Err(StoreError::Unavailable(format!(
                "the backup {} was replaced or opened up while it was written; do not trust it",
                target.display()
            )));
        }
        Ok(())
    }
}

impl Db {
    /// Active rows still sealed without a generation (AAD format 1), a page at a time.
    pub fn legacy_sealed(&self, limit: usize) -> Result<Vec<CredentialRow>, StoreError> {
        let sql = format!("SELECT {} FROM credentials WHERE state = 1 AND generation IS NULL LIMIT ?1", rows::COLUMNS);
        self.with_reader(|conn| {
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], rows::read_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Replaces a legacy seal by `code`, only if the row still holds the seal with `old_nonce`
    /// at `version` (so it cannot overwrite a concurrent change). `false` if it moved.
    pub fn reseal(&self, row: &CredentialRow, old_nonce: &[u8], code: &StoredCode) -> Result<bool, StoreError> {
        let conn = self.writer()?;
        let changed = conn.execute(
            "UPDATE credentials SET key_id = ?1, nonce = ?2, ciphertext = ?3, generation = ?4 \
             WHERE mailbox = ?5 AND client = ?6 AND version = ?7 AND nonce = ?8 AND generation IS NULL",
            params![
                code.key_id,
                &code.sealed.nonce[..],
                &code.sealed.ciphertext,
                code.generation.as_ref().map(|g| &g[..]),
                row.mailbox,
                row.client,
                i64::try_from(row.version).unwrap_or(i64::MAX),
                old_nonce
            ],
        )?;
        Ok(changed == 1)
    }
}

/// Checkpoint attempts after a Revoke or Rotate; each waits up to the busy timeout for readers.
const SHRED_ATTEMPTS: usize = 3;

impl Db {
    /// After a change that destroys a ciphertext or key wrapping (Revoke, Rotate, a passphrase
    /// change, a re-seal): copies the WAL into the database (where `secure_delete` has
    /// zeroed the old cell) and truncates the WAL, so no live file keeps the old ciphertext or
    /// nonce. The change is already committed; if readers keep the checkpoint from finishing,
    /// that is logged and the next Revoke, Rotate or shutdown truncates it.
    pub fn shred_wal(&self) {
        for _ in 0..SHRED_ATTEMPTS {
            match self.checkpoint() {
                Ok(true) => return,
                Ok(false) => std::thread::sleep(std::time::Duration::from_millis(10)),
                Err(e) => {
                    tracing::error!(error = %e, "WAL truncation failed; destroyed bytes stay in vault.db-wal until the next truncation (Revoke, Rotate or a stop)");
                    return;
                }
            }
        }
        tracing::error!(
            "readers kept the WAL from being truncated after a revoke or rotate; the old ciphertext stays in vault.db-wal until the next one"
        );
    }
}
