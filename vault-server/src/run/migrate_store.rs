//! `migrate-store`: a data dir's vault into an empty PostgreSQL database, every row as stored.
//! The passphrase is checked on both sides, and every active code is opened in the database
//! before the command says it is done.

use super::database::{Database, unlock_postgres};
use super::{RunError, now, read_passphrase};
use crate::cli::MigrateStoreArgs;
use crate::datadir;
use crate::secret::Passphrase;
use crate::store::{AuditQuery, Batch, CredentialStore as _, ListQuery, Moved, PgStore, SqliteStore, StoreError};

/// Rows read from the data dir per batch.
const BATCH: usize = 1000;

pub fn run(args: &MigrateStoreArgs, env_passphrase: Option<Passphrase>) -> Result<(), RunError> {
    let Ok(Database::Postgres { url, ca_file }) = Database::from_args(&args.database, None) else {
        return Err(RunError::Database(
            "migrate-store needs --database with a postgres:// URL to move the data dir into".into(),
        ));
    };
    let dir = &args.data_dir;
    datadir::check_present(dir)?;
    // No server writes to the data dir while it is copied.
    let _owner = datadir::lock_for_serve(dir)?;
    let passphrase = read_passphrase(&args.passphrase, env_passphrase)?;
    let (source, _) = datadir::unlock(dir, &passphrase)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(RunError::Runtime)?;
    let moved = runtime.block_on(async {
        let target = PgStore::connect(&url, ca_file.as_deref())
            .await
            .map_err(|e| RunError::Database(format!("PostgreSQL --database: {e}")))?;
        let moved = copy(&source, &target).await.map_err(|e| match e {
            StoreError::AlreadyExists => {
                RunError::Database("the PostgreSQL database already holds a vault; nothing was copied".into())
            }
            e => RunError::Database(format!("the copy failed and was rolled back: {e}")),
        })?;
        check(&url, ca_file.as_deref(), &passphrase, moved).await?;
        Ok::<_, RunError>(moved)
    })?;
    println!(
        "moved {} active and {} revoked bindings, {} tokens and {} audit events from {} into the PostgreSQL database; \
         every active code opens there. Serve with --database from now on, and retire the data dir (it still holds \
         every code, sealed)",
        moved.active,
        moved.revoked,
        moved.tokens,
        moved.audit_events,
        dir.display()
    );
    Ok(())
}

/// Every row of `source` into `target`, in one transaction there.
async fn copy(source: &SqliteStore, target: &PgStore) -> Result<Moved, StoreError> {
    let db = source.sync();
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
            Err(bad) => eprintln!("warning: token row {} is unreadable ({}); not moved", bad.id, bad.reason),
        }
    }
    let mut tokens = Some(readable);
    let mut audit = Some(audit);
    let mut after: Option<(String, String)> = None;
    let mut rows_done = false;
    target
        .import_vault(&material, now(), || {
            let next = if rows_done {
                tokens.take().map(Batch::Tokens).or_else(|| audit.take().map(Batch::Audit))
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
                    code.generation.as_ref(),
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
