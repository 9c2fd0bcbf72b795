//! `migrate-store`: a data dir's vault into an empty PostgreSQL database, every row as stored.
//! The passphrase is checked on both sides, and every active code is opened in the database
//! before the command says it is done.

use super::database::{Database, unlock_postgres};
use super::{RunError, emit, note, now, read_passphrase};
use crate::cli::MigrateStoreArgs;
use crate::datadir;
use crate::secret::Passphrase;
use crate::store::{
    AuditQuery, Batch, CredentialStore as _, KeyMaterialStore as _, ListQuery, Moved, PgStore, SqliteDb, SqliteStore,
    StoreError,
};

/// Rows read from the data dir per batch.
const BATCH: usize = 1000;

pub fn run(args: &MigrateStoreArgs, env_passphrase: Option<Passphrase>) -> Result<(), RunError> {
    let Ok(Database::Postgres { url, ca_file }) = Database::from_args(&args.database, None) else {
        return Err(RunError::Usage(
            "migrate-store needs --database with a postgres:// URL to move the data dir into".into(),
        ));
    };
    let dir = &args.data_dir;
    datadir::check_present(dir)?;
    // No server writes to the data dir while it is copied.
    let _owner = datadir::lock_for_serve(dir)?;
    let passphrase = read_passphrase(&args.passphrase, env_passphrase)?;
    let (source, keyring) = datadir::unlock(dir, &passphrase)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(RunError::Runtime)?;
    // The database is reached, and found empty, before anything in the data dir is changed.
    let target = runtime.block_on(async {
        let target = PgStore::connect(&url, ca_file.as_deref())
            .await
            .map_err(|e| RunError::Database(format!("PostgreSQL --database: {e}")))?;
        match target.unlock_material().await {
            Err(StoreError::NotInitialised) => Ok(target),
            Ok(_) => {
                Err(RunError::Database("the PostgreSQL database already holds a vault; nothing was copied".into()))
            }
            Err(e) => Err(e.into()),
        }
    })?;
    // As `serve` does at start: rows sealed before generations are re-sealed with one. A serving
    // vault refuses any row still without one (DATA_LOSS), so none may be moved as if it opened.
    datadir::upgrade_seals(dir, &source, &keyring)?;
    let left = source.sync().legacy_sealed(1).map_err(|e| RunError::Database(e.to_string()))?;
    if let Some(row) = left.first() {
        return Err(RunError::Database(format!(
            "{} / {} is sealed without a generation and does not open (tampered?): a serving vault answers DATA_LOSS for it; revoke it, or restore the data dir, before migrating; nothing was copied",
            row.mailbox, row.client
        )));
    }
    let moved = runtime.block_on(async {
        let moved = copy(&source, &target).await.map_err(|e| {
            match e {
            StoreError::AlreadyExists => RunError::Database(
                "a row of the data dir conflicts with one in the database (a vault made meanwhile?); nothing was copied"
                    .into(),
            ),
            StoreError::Conflict => RunError::Database(
                "a token or passphrase command changed the data dir during the copy; nothing was copied, run it again"
                    .into(),
            ),
            e => RunError::Database(format!("the copy failed and was rolled back: {e}")),
        }
        })?;
        check(&url, ca_file.as_deref(), &passphrase, moved).await?;
        Ok::<_, RunError>(moved)
    })?;
    emit(format_args!(
        "moved {} active and {} revoked bindings, {} tokens and {} audit events from {} into the PostgreSQL database; \
         every active code opens there. Serve with --database from now on, and retire the data dir (it still holds \
         every code, sealed)",
        moved.active,
        moved.revoked,
        moved.tokens,
        moved.audit_events,
        dir.display()
    ))?;
    Ok(())
}

/// What a token or passphrase command (which do not take the data dir's lock) would change:
/// the salt and key wrappings, and each token's MAC and revocation.
fn fingerprint(db: &SqliteDb) -> Result<Vec<Vec<u8>>, StoreError> {
    let material = db.unlock_material()?;
    let mut out = vec![material.salt.0.to_vec()];
    out.extend(material.keys.iter().map(|k| k.sealed.nonce.to_vec()));
    for t in db.tokens()?.into_iter().flatten() {
        out.push([t.id.as_bytes(), &t.mac, &t.revoked_at.unwrap_or(0).to_be_bytes()].concat());
    }
    Ok(out)
}

/// Every row of `source` into `target`, in one transaction there; `Conflict` (and nothing
/// committed) if the tokens or the unlock material changed meanwhile.
async fn copy(source: &SqliteStore, target: &PgStore) -> Result<Moved, StoreError> {
    let db = source.sync();
    let unchanged = fingerprint(db)?;
    let material = db.unlock_material()?;
    // The audit trail is read newest first; it is written oldest first.
    let mut audit = Vec::new();
    let mut before = None;
    loop {
        let page = db.audit_events(&AuditQuery { before, limit: BATCH, ..Default::default() })?;
        let Some(last) = page.last() else { break };
        before = Some((last.event.at, last.id));
        audit.extend(page.into_iter().map(|r| r.event));
    }
    audit.reverse();
    let mut readable = Vec::new();
    for token in db.tokens()? {
        match token {
            Ok(t) => readable.push(t),
            // The server refuses it anyway; a copy could not make it valid.
            Err(bad) => note(format_args!("warning: token row {} is unreadable ({}); not moved", bad.id, bad.reason)),
        }
    }
    let mut tokens = Some(readable);
    let mut audit = Some(audit);
    let mut after: Option<(String, String)> = None;
    let mut rows_done = false;
    target
        .import_vault(&material, now(), || {
            let next = if rows_done {
                let next = tokens.take().map(Batch::Tokens).or_else(|| audit.take().map(Batch::Audit));
                // The last call, before the commit: nothing the copy read may have changed.
                if next.is_none() && fingerprint(db).ok().as_ref() != Some(&unchanged) {
                    return std::future::ready(Err(StoreError::Conflict));
                }
                next
            } else {
                let query =
                    ListQuery { include_revoked: true, after: after.take(), limit: BATCH, ..Default::default() };
                match db.list(&query) {
                    Ok(rows) if rows.is_empty() => {
                        rows_done = true;
                        tokens.take().map(Batch::Tokens)
                    }
                    Ok(rows) => {
                        after = rows.last().map(|r| (r.mailbox.clone(), r.client.clone()));
                        Some(Batch::Credentials(rows))
                    }
                    Err(e) => return std::future::ready(Err(e)),
                }
            };
            std::future::ready(Ok(next))
        })
        .await
}

/// Unlocks the database with the passphrase and opens every active code in it.
async fn check(
    url: &str,
    ca_file: Option<&std::path::Path>,
    passphrase: &Passphrase,
    moved: Moved,
) -> Result<(), RunError> {
    let (target, keyring, _) = unlock_postgres(url, ca_file, passphrase).await?;
    let mut opened = 0;
    let mut after = None;
    loop {
        let rows = target.list(ListQuery { after: after.take(), limit: BATCH, ..Default::default() }).await?;
        let Some(last) = rows.last() else { break };
        after = Some((last.mailbox.clone(), last.client.clone()));
        for row in &rows {
            let Some(code) = &row.code else { continue };
            keyring
                .open_code(
                    code.key_id,
                    &row.mailbox,
                    &row.client,
                    row.version,
                    // Without a generation a serving vault refuses the row (DATA_LOSS).
                    Some(code.generation.as_ref().ok_or_else(|| {
                        RunError::Database(format!(
                            "{} / {} has no generation in the database",
                            row.mailbox, row.client
                        ))
                    })?),
                    &code.sealed.nonce,
                    &code.sealed.ciphertext,
                )
                .map_err(|e| {
                    RunError::Database(format!("{} / {} does not open in the database: {e}", row.mailbox, row.client))
                })?;
            opened += 1;
        }
    }
    if opened != moved.active {
        return Err(RunError::Database(format!("{opened} active codes in the database, {} moved", moved.active)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::TokenRow;

    #[test]
    fn the_fingerprint_sees_what_token_and_passphrase_commands_change() {
        let tmp = tempfile::tempdir().unwrap();
        let (_, material) = crate::store::contract::keyring();
        let db = SqliteStore::create(&tmp.path().join("v.db"), &material, 0).unwrap();
        let db = db.sync();
        let token = |id: &str| TokenRow {
            id: id.into(),
            role: "admin".into(),
            digest: vec![1; 32],
            key_id: material.keys[0].key_id,
            mac: vec![2; 32],
            created_at: 0,
            last_used_at: None,
            revoked_at: None,
        };
        db.insert_token(&token("tk_aaaaaaaaaaaa")).unwrap();
        let first = fingerprint(db).unwrap();
        assert_eq!(fingerprint(db).unwrap(), first, "a read changes nothing");
        db.record_token_use(&[("tk_aaaaaaaaaaaa".into(), 5)]).unwrap();
        assert_eq!(fingerprint(db).unwrap(), first, "a use is no change to copy again");
        db.insert_token(&token("tk_bbbbbbbbbbbb")).unwrap();
        let minted = fingerprint(db).unwrap();
        assert_ne!(minted, first, "a token minted meanwhile");
        db.revoke_token("tk_aaaaaaaaaaaa", 9).unwrap();
        assert_ne!(fingerprint(db).unwrap(), minted, "a token revoked meanwhile");
        let before = db.unlock_material().unwrap();
        let mut changed = before.clone();
        changed.salt = crate::crypto::Salt([9; 16]);
        changed.keys[0].sealed.nonce = [7; 24];
        let revoked = fingerprint(db).unwrap();
        db.replace_unlock_material(&before, &changed).unwrap();
        assert_ne!(fingerprint(db).unwrap(), revoked, "a passphrase changed meanwhile");
    }
}
