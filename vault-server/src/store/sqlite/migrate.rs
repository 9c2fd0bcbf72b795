//! Schema migrations from `migrations/*.sql`, embedded at compile time and applied in order.
//! `PRAGMA user_version` records how many have run. Before any is applied, the file's schema
//! must be exactly what the migrations it has seen create: a trigger, table or index added,
//! dropped or altered by hand is refused, so that nothing copies codes aside or silently slows a
//! query.

use std::collections::BTreeMap;

use rusqlite::Connection;

use crate::store::StoreError;

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

/// Applies the migrations this database has not seen, each in its own transaction.
pub fn apply(conn: &mut Connection) -> Result<(), StoreError> {
    let applied: usize = conn
        .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
        .map(|v| usize::try_from(v).unwrap_or(usize::MAX))?;
    if applied > MIGRATIONS.len() {
        return Err(StoreError::Corrupt(format!(
            "schema version {applied} is newer than this binary knows ({}); upgrade vault-server",
            MIGRATIONS.len()
        )));
    }
    check_schema(conn, applied)?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i64::try_from(i + 1).unwrap_or(i64::MAX))?;
        tx.commit()?;
    }
    Ok(())
}

/// Every schema object but `ANALYZE`'s statistics tables, by (type, name), each with its SQL,
/// whitespace collapsed. Names starting `sqlite_` are compared too: `writable_schema` lets anyone
/// create a trigger under SQLite's reserved prefix.
fn schema_objects(conn: &Connection) -> Result<BTreeMap<(String, String), String>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT type, name, coalesce(sql, '') FROM sqlite_master \
         WHERE NOT (type = 'table' AND name IN ('sqlite_stat1', 'sqlite_stat2', 'sqlite_stat3', 'sqlite_stat4'))",
    )?;
    let rows = stmt.query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get::<_, String>(2)?)))?;
    let mut objects = BTreeMap::new();
    for row in rows {
        let (key, sql) = row?;
        objects.insert(key, sql.split_whitespace().collect::<Vec<_>>().join(" "));
    }
    Ok(objects)
}

/// Fails, changing nothing, unless `conn`'s schema is what the first `applied` migrations create.
fn check_schema(conn: &Connection, applied: usize) -> Result<(), StoreError> {
    let reference = Connection::open_in_memory()?;
    for sql in MIGRATIONS.iter().take(applied) {
        reference.execute_batch(sql)?;
    }
    let want = schema_objects(&reference)?;
    let have = schema_objects(conn)?;
    let mut problems = Vec::new();
    for ((kind, name), sql) in &want {
        let named = quoted(name);
        match have.get(&(kind.clone(), name.clone())) {
            None if kind == "index" => problems.push(format!("index {named} is missing (recreate it: {sql})")),
            None => problems.push(format!("{kind} {named} is missing")),
            Some(found) if found != sql => problems.push(format!("{kind} {named} differs from its migration")),
            Some(_) => {}
        }
    }
    for (kind, name) in have.keys().filter(|k| !want.contains_key(*k)) {
        problems.push(format!("{kind} {} is not part of it ({})", quoted(name), removal(kind, name)));
    }
    if problems.is_empty() {
        return Ok(());
    }
    // Keep the message readable whatever was done to the file.
    let shown = problems.len().min(5);
    let mut message =
        format!("its schema was changed outside vault-server and it is refused: {}", problems[..shown].join("; "));
    if problems.len() > shown {
        message = format!("{message}; and {} more", problems.len() - shown);
    }
    message.push_str(". Nothing was changed: undo the edit, or restore the data dir from a backup");
    Err(StoreError::Corrupt(message))
}

/// `name` as an SQL identifier; Debug-escaped if it holds control characters, so that a log line
/// stays one line.
fn quoted(name: &str) -> String {
    if name.chars().any(char::is_control) { format!("{name:?}") } else { format!("\"{}\"", name.replace('"', "\"\"")) }
}

/// How to remove an object that is not part of the schema. SQLite refuses to drop a table or
/// view under its reserved prefix, so those leave through `sqlite_master` (and `VACUUM` frees
/// their pages).
fn removal(kind: &str, name: &str) -> String {
    let reserved = name.get(..7).is_some_and(|p| p.eq_ignore_ascii_case("sqlite_"));
    if name.chars().any(char::is_control) {
        "remove it".to_owned()
    } else if reserved && matches!(kind, "table" | "view") {
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
    fn a_migrated_database_and_its_statistics_pass() {
        let (_tmp, path) = migrated();
        reopen_after(&path, "ANALYZE; PRAGMA optimize;").unwrap();
        let stats: i64 = Connection::open(&path)
            .unwrap()
            .query_row("SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(stats, 1, "ANALYZE wrote no statistics table: the test proves nothing");
        reopen_after(&path, "").unwrap();
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
        assert!(m.contains("Nothing was changed"), "{m}");
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
    fn a_long_list_of_changes_is_cut_short() {
        let (_tmp, path) = migrated();
        let edit = (0..9).map(|i| format!("CREATE TABLE t{i} (x);")).collect::<Vec<_>>().join(" ");
        let m = refused(reopen_after(&path, &edit));
        assert!(m.contains("; and 4 more."), "{m}");
    }
}
