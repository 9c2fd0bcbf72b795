//! Schema migrations from `migrations/*.sql`, embedded at compile time and applied in order.
//! `PRAGMA user_version` records how many have run. Before any is applied, the file's schema
//! must be exactly what the migrations it has seen create: a trigger, table or index added,
//! dropped or altered by hand is refused, so that nothing copies codes aside or silently slows a
//! query.

use std::collections::BTreeMap;

use rusqlite::Connection;

use crate::store::{StoreError, quoted};

const MIGRATIONS: &[&str] = &[
    include_str!("../../../../migrations/0001_init.sql"),
    include_str!("../../../../migrations/0002_tokens.sql"),
    include_str!("../../../../migrations/0003_seal_generation.sql"),
    include_str!("../../../../migrations/0004_data_key_rotation.sql"),
    include_str!("../../../../migrations/0005_requests.sql"),
    include_str!("../../../../migrations/0006_verification_sweep.sql"),
    include_str!("../../../../migrations/0007_audit_by_time.sql"),
    include_str!("../../../../migrations/0008_counts_by_state.sql"),
    include_str!("../../../../migrations/0009_audit_reason.sql"),
];

/// Applies the migrations this database has not seen, each in its own transaction, once its
/// schema is checked.
pub fn apply(conn: &mut Connection) -> Result<(), StoreError> {
    let applied = version(conn)?;
    check_schema(conn, applied)?;
    migrate_from(conn, applied)
}

/// The file's schema version, refused if newer than this binary.
fn version(conn: &Connection) -> Result<usize, StoreError> {
    let applied: usize = conn
        .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
        .map(|v| usize::try_from(v).unwrap_or(usize::MAX))?;
    if applied > MIGRATIONS.len() {
        return Err(StoreError::Corrupt(format!(
            "schema version {applied} is newer than this binary knows ({}); upgrade vault-server",
            MIGRATIONS.len()
        )));
    }
    Ok(applied)
}

/// Applies the migrations after `applied`. The version is read again under each write lock: a
/// CLI command opening the file while a server migrates it (a large table can take seconds)
/// read it before the server committed, and applied the server's migration a second time.
fn migrate_from(conn: &mut Connection, mut applied: usize) -> Result<(), StoreError> {
    while let Some(sql) = MIGRATIONS.get(applied) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let now = version(&tx)?;
        if now != applied {
            // Migrated meanwhile by another process: checked like the file was.
            check_schema(&tx, now)?;
            tx.commit()?;
            applied = now;
            continue;
        }
        tx.execute_batch(sql)?;
        applied += 1;
        tx.pragma_update(None, "user_version", i64::try_from(applied).unwrap_or(i64::MAX))?;
        tx.commit()?;
    }
    Ok(())
}

/// Every schema object, `sqlite_`-named ones too (`writable_schema` lets anyone create a
/// trigger under SQLite's reserved prefix; the server never writes `ANALYZE` statistics, which
/// steer the planner), by (type, name), each with its SQL exactly as stored.
type Schema = BTreeMap<(String, String), String>;

fn schema_objects(conn: &Connection) -> Result<Schema, StoreError> {
    let mut stmt = conn.prepare("SELECT type, name, coalesce(sql, '') FROM sqlite_master")?;
    let rows = stmt.query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get::<_, String>(2)?)))?;
    Ok(rows.collect::<Result<Schema, _>>()?)
}

/// The schema after each number of migrations, from none to all.
fn reference_schemas() -> Result<Vec<Schema>, StoreError> {
    let reference = Connection::open_in_memory()?;
    let mut schemas = vec![schema_objects(&reference)?];
    for sql in MIGRATIONS {
        reference.execute_batch(sql)?;
        schemas.push(schema_objects(&reference)?);
    }
    Ok(schemas)
}

/// Whether `conn` is exactly what its own number of migrations creates, with every table
/// empty: a file an `init` started and never finished. Anything else (another schema, a foreign
/// or renamed table, one row anywhere) is not.
pub fn untouched(conn: &Connection) -> Result<bool, StoreError> {
    let applied = version(conn)?;
    if check_schema(conn, applied).is_err() {
        return Ok(false);
    }
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for table in tables {
        // The names are the migrations' own: the schema matched them exactly.
        if conn.query_row(&format!("SELECT EXISTS (SELECT 1 FROM \"{table}\")"), [], |r| r.get::<_, bool>(0))? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Fails, changing nothing, unless `conn`'s schema is what the first `applied` migrations create.
fn check_schema(conn: &Connection, applied: usize) -> Result<(), StoreError> {
    let references = reference_schemas()?;
    let have = schema_objects(conn)?;
    let Some(want) = references.get(applied) else {
        return Err(StoreError::Corrupt(format!("schema version {applied} is unknown")));
    };
    if &have == want {
        return Ok(());
    }
    let refused = "its schema was changed outside vault-server and it is refused";
    // The schema of another version: the recorded version was lost (a dump and reload resets it).
    if let Some(k) = references.iter().position(|r| *r == have) {
        return Err(StoreError::Corrupt(format!(
            "{refused}: it is the schema of migration {k}, but the file says {applied} \
             (PRAGMA user_version = {k} restores it, if the file came from a dump of a vault). No \
             migration ran and no row was written"
        )));
    }
    // Objects some migration creates are never advised away: their rows are the vault's.
    let ours = references.last().cloned().unwrap_or_default();
    // Objects no migration makes first (the likeliest tampering), then changed or missing ones,
    // then later migrations' objects.
    let (mut foreign, mut changed, mut later) = (Vec::new(), Vec::new(), Vec::new());
    for ((kind, name), sql) in want {
        let named = quoted(name);
        match have.get(&(kind.clone(), name.clone())) {
            None if kind == "index" => changed.push(format!("index {named} is missing (recreate it: {sql})")),
            None => changed.push(format!("{kind} {named} is missing")),
            Some(found) if found != sql => changed.push(format!("{kind} {named} differs from its migration")),
            Some(_) => {}
        }
    }
    for key @ (kind, name) in have.keys().filter(|k| !want.contains_key(*k)) {
        let named = quoted(name);
        if ours.contains_key(key) {
            later.push(format!("{kind} {named} is not part of it (a later migration makes it)"));
        } else {
            foreign.push(format!("{kind} {named} is not part of it ({})", removal(kind, name)));
        }
    }
    let problems = [foreign, changed, later].concat();
    // Keep the message readable whatever was done to the file.
    let shown = problems.len().min(5);
    let mut message = format!("{refused}: {}", problems[..shown].join("; "));
    if problems.len() > shown {
        message = format!("{message}; and {} more", problems.len() - shown);
    }
    message.push_str(". No migration ran and no row was written: undo the edit, or restore the data dir from a backup");
    Err(StoreError::Corrupt(message))
}

/// How to remove an object that is not part of the schema. SQLite refuses to drop a table or
/// view under its reserved prefix, so those leave through `sqlite_master` (and `VACUUM` frees
/// their pages).
fn removal(kind: &str, name: &str) -> String {
    let reserved = name.get(..7).is_some_and(|p| p.eq_ignore_ascii_case("sqlite_"));
    let statistics = name.get(..11).is_some_and(|p| p.eq_ignore_ascii_case("sqlite_stat"));
    if name.chars().any(char::is_control) {
        "remove it".to_owned()
    } else if reserved && !statistics && matches!(kind, "table" | "view") {
        format!(
            "remove it: PRAGMA writable_schema = ON; DELETE FROM sqlite_master WHERE type = '{kind}' AND name = '{}'; \
             then VACUUM",
            name.replace('\'', "''")
        )
    } else {
        format!("remove it: DROP {} {}", kind.to_uppercase(), quoted(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn migrated() -> (tempfile::TempDir, std::path::PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("v.db");
        apply(&mut Connection::open(&path).unwrap()).unwrap();
        (tmp, path)
    }

    /// Reopens `path` the way the store does, after `edit` ran on it.
    fn reopen_after(path: &std::path::Path, edit: &str) -> Result<(), StoreError> {
        Connection::open(path).unwrap().execute_batch(edit).unwrap();
        apply(&mut Connection::open(path).unwrap())
    }

    fn refused(result: Result<(), StoreError>) -> String {
        match result {
            Err(StoreError::Corrupt(m)) => m,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn a_migrated_database_passes_and_planner_statistics_are_refused() {
        let (_tmp, path) = migrated();
        reopen_after(&path, "").unwrap();
        // Statistics steer the planner (a planted row sent the review page to a full scan); the
        // server never writes them.
        let m = refused(reopen_after(&path, "ANALYZE;"));
        assert!(m.contains("table \"sqlite_stat1\" is not part of it (remove it: DROP TABLE \"sqlite_stat1\")"), "{m}");
        let drops = ["sqlite_stat1", "sqlite_stat4"]
            .iter()
            .filter(|t| m.contains(&format!("DROP TABLE \"{t}\"")))
            .map(|t| format!("DROP TABLE {t};"))
            .collect::<Vec<_>>()
            .join(" ");
        reopen_after(&path, &drops).unwrap();
    }

    #[test]
    fn a_table_changed_in_sqlite_master_is_refused_to_the_byte() {
        let (_tmp, path) = migrated();
        // A no-break space turns the foreign key's target into another table's name.
        let edit = "PRAGMA writable_schema = ON; \
                    UPDATE sqlite_master SET sql = replace(sql, 'REFERENCES keyring (key_id)', \
                    'REFERENCES keyring' || char(160) || '(key_id)') WHERE name = 'credentials'; \
                    PRAGMA writable_schema = OFF;";
        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn.query_row("PRAGMA schema_version", [], |r| r.get(0)).unwrap();
        conn.execute_batch(edit).unwrap();
        conn.execute_batch(&format!("PRAGMA writable_schema = ON; PRAGMA schema_version = {};", version + 1)).unwrap();
        drop(conn);
        let m = refused(apply(&mut Connection::open(&path).unwrap()));
        assert!(m.contains("table \"credentials\" differs from its migration"), "{m}");
    }

    #[test]
    fn a_lost_schema_version_is_named_and_nothing_of_the_vault_is_advised_away() {
        let (_tmp, path) = migrated();
        let m = refused(reopen_after(&path, "PRAGMA user_version = 0;"));
        let latest = MIGRATIONS.len();
        assert!(m.contains(&format!("it is the schema of migration {latest}, but the file says 0")), "{m}");
        assert!(m.contains(&format!("PRAGMA user_version = {latest}")) && !m.contains("DROP"), "{m}");
        // An older version recorded, and an object no migration makes: that one is named first;
        // the later migrations' objects are named as theirs, never as something to drop.
        let m = refused(reopen_after(&path, &format!("PRAGMA user_version = {}; CREATE TABLE loot (c);", latest - 2)));
        let first = "its schema was changed outside vault-server and it is refused: table \"loot\" is not part of it \
                     (remove it: DROP TABLE \"loot\")";
        assert!(m.starts_with(first), "{m}");
        assert!(m.contains("(a later migration makes it)") && m.matches("DROP").count() == 1, "{m}");
    }

    #[test]
    fn a_trigger_or_table_added_by_hand_is_refused_and_named() {
        let (_tmp, path) = migrated();
        let m = refused(reopen_after(
            &path,
            "CREATE TABLE loot (c BLOB); \
             CREATE TRIGGER keep_codes BEFORE DELETE ON credentials BEGIN INSERT INTO loot VALUES (old.ciphertext); END;",
        ));
        assert!(m.contains("trigger \"keep_codes\" is not part of it (remove it: DROP TRIGGER \"keep_codes\")"), "{m}");
        assert!(m.contains("table \"loot\""), "{m}");
        assert!(m.contains("No migration ran and no row was written"), "{m}");
    }

    #[test]
    fn a_trigger_under_sqlites_reserved_prefix_is_refused_too() {
        let (_tmp, path) = migrated();
        let m = refused(reopen_after(
            &path,
            "PRAGMA writable_schema = ON; CREATE TABLE sqlite_loot (c BLOB); \
             CREATE TRIGGER sqlite_keep BEFORE UPDATE OF ciphertext ON credentials \
             BEGIN INSERT INTO sqlite_loot VALUES (old.ciphertext); END;",
        ));
        assert!(
            m.contains("trigger \"sqlite_keep\" is not part of it (remove it: DROP TRIGGER \"sqlite_keep\")"),
            "{m}"
        );
        let how =
            "PRAGMA writable_schema = ON; DELETE FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_loot'";
        assert!(m.contains(&format!("table \"sqlite_loot\" is not part of it (remove it: {how}; then VACUUM)")), "{m}");
        // Done as it says, the file passes and is whole.
        reopen_after(&path, &format!("DROP TRIGGER sqlite_keep; {how}; VACUUM;")).unwrap();
        let check: String =
            Connection::open(&path).unwrap().query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(check, "ok");
    }

    #[test]
    fn a_name_with_a_line_break_stays_on_one_line() {
        let (_tmp, path) = migrated();
        let m = refused(reopen_after(&path, "CREATE TABLE \"x\ny\" (c);"));
        assert!(m.contains("table \"x\\ny\" is not part of it (remove it)") && !m.contains('\n'), "{m}");
    }

    #[test]
    fn an_index_dropped_or_redefined_is_refused_with_how_to_recreate_it() {
        let (_tmp, path) = migrated();
        let m = refused(reopen_after(&path, "DROP INDEX credentials_by_client;"));
        assert!(
            m.contains("index \"credentials_by_client\" is missing (recreate it: CREATE INDEX credentials_by_client ON credentials (client, mailbox))"),
            "{m}"
        );
        let m = refused(reopen_after(&path, "CREATE INDEX credentials_by_client ON credentials (client);"));
        assert!(m.contains("index \"credentials_by_client\" differs from its migration"), "{m}");
    }

    #[test]
    fn an_old_database_is_checked_against_its_own_migrations_before_any_is_applied() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("v.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.execute_batch("PRAGMA user_version = 1; CREATE INDEX extra ON credentials (created_at);").unwrap();
        drop(conn);
        let m = refused(apply(&mut Connection::open(&path).unwrap()));
        assert!(m.contains("index \"extra\" is not part of it"), "{m}");
        let version: i64 = Connection::open(&path).unwrap().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, 1, "a migration ran on a refused database");
        Connection::open(&path).unwrap().execute_batch("DROP INDEX extra;").unwrap();
        apply(&mut Connection::open(&path).unwrap()).unwrap();
    }

    #[test]
    fn a_migration_another_process_applied_meanwhile_is_not_applied_again() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("v.db");
        let older = MIGRATIONS.len() - 1;
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(&MIGRATIONS[..older].concat()).unwrap();
        conn.pragma_update(None, "user_version", i64::try_from(older).unwrap()).unwrap();
        drop(conn);
        // This one read the version (and checked the schema) before the other one migrated.
        let mut late = Connection::open(&path).unwrap();
        assert_eq!(version(&late).unwrap(), older);
        apply(&mut Connection::open(&path).unwrap()).unwrap();
        migrate_from(&mut late, older).unwrap();
        assert_eq!(version(&late).unwrap(), MIGRATIONS.len());
        apply(&mut late).unwrap();
    }

    #[test]
    fn a_long_list_of_changes_is_cut_short() {
        let (_tmp, path) = migrated();
        let edit = (0..9).map(|i| format!("CREATE TABLE t{i} (x);")).collect::<Vec<_>>().join(" ");
        let m = refused(reopen_after(&path, &edit));
        assert!(m.contains("; and 4 more."), "{m}");
    }
}
