//! The change log, checked. Every replica's row cache trusts that each change to `credentials`
//! is logged to `changes` by the triggers of migrations 0001 and 0004, so a trigger disabled,
//! dropped or recreated by hand would let a replica serve a revoked code from memory.
//!
//! Every read of the log reads the catalog in the same snapshot: while a trigger is not as its
//! migration made it, or `changes` is not a plain table free of triggers and rules, the read
//! fails and no read vouches for the cache; and when any trigger or rule of the vault's tables
//! was written since the last read (even disabled and enabled again in one transaction), the
//! read drops the whole cache. `serve` also refuses to start while someone else's trigger or
//! rule sits on a vault table: one could copy the codes the vault destroys.

use tokio_postgres::GenericClient;

use super::migrate::MIGRATIONS;
use crate::store::{StoreError, quoted};

/// Each change-log trigger on `credentials`, the function it runs and its `pg_trigger.tgtype`
/// (row-level 1, INSERT 4, DELETE 8, UPDATE 16, TRUNCATE 32; AFTER is 0). None has a WHEN
/// clause (migration 0004 moved the update trigger's into its function).
const CHANGE_LOG: [(&str, &str, i32); 3] = [
    ("credentials_insert_or_delete", "vault_note_change", 1 | 4 | 8),
    ("credentials_update", "vault_note_change", 1 | 16),
    ("credentials_truncate", "vault_note_truncate", 32),
];

/// The tables the migrations create (others in the schema are none of the vault's business).
const TABLES: [&str; 11] = [
    "vault_schema",
    "vault_meta",
    "keyring",
    "credentials",
    "audit_events",
    "tokens",
    "requests",
    "changes",
    "probe_budget",
    "pair_leases",
    "host_slots",
];

/// The user triggers on the vault's tables (foreign-key triggers are internal, not listed). A
/// function is pinned when it is a PL/pgSQL one of the tables' schema whose one setting is the
/// search path migration 0004 gave it: that schema, then `pg_temp`.
const TRIGGERS: &str = "SELECT c.relname::text, t.tgname::text, t.tgenabled::text, p.proname::text, p.prosrc, \
     t.tgtype::int4, cardinality(t.tgattr::int2[]) = 0, t.tgqual IS NOT NULL, \
     (p.pronamespace = c.relnamespace AND l.lanname = 'plpgsql' \
      AND p.proconfig = ARRAY['search_path=' || quote_ident(current_schema()) || ', pg_temp']), \
     concat_ws(':', t.oid, t.xmin, p.oid, p.xmin) \
     FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_proc p ON p.oid = t.tgfoid \
     JOIN pg_language l ON l.oid = p.prolang \
     WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema()) \
     AND c.relname = ANY($1) AND NOT t.tgisinternal ORDER BY 1, 2";
/// The rules on the vault's tables (a view's own `_RETURN` rule aside).
const RULES: &str = "SELECT c.relname::text, r.rulename::text, concat_ws(':', r.oid, r.xmin) \
     FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class \
     WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema()) \
     AND c.relname = ANY($1) AND r.rulename <> '_RETURN' ORDER BY 1, 2";
/// `credentials` and `changes`: each must be a plain, permanent table without row security or
/// inheritance (a child's rows fire none of the parent's row triggers), and its id and file
/// go into the stamp (a log dropped and made again, or truncated, loses rows no one read).
const LOG_TABLES: &str = "SELECT c.relname::text, \
     c.relkind = 'r' AND c.relpersistence = 'p' AND NOT c.relrowsecurity \
     AND NOT EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = c.oid OR i.inhrelid = c.oid), \
     concat_ws(':', c.oid, c.relfilenode) FROM pg_class c \
     WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema()) \
     AND c.relname IN ('credentials', 'changes') ORDER BY 1";

/// A trigger as the catalog has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Trigger {
    pub table: String,
    pub name: String,
    /// `pg_trigger.tgenabled`: `A` fires always, `O` and `R` by `session_replication_role`, `D`
    /// never.
    pub enabled: String,
    pub function: String,
    pub body: String,
    pub kind: i32,
    /// Fires for an UPDATE of any column (no `UPDATE OF` list).
    pub all_columns: bool,
    pub has_when: bool,
    /// See [`TRIGGERS`].
    pub function_pinned: bool,
    /// The catalog rows' ids and writing transactions: any change to them changes it.
    pub stamp: String,
}

/// A rule on a vault table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Rule {
    pub table: String,
    pub name: String,
    pub stamp: String,
}

/// What the catalog says of the vault's tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Catalog {
    pub triggers: Vec<Trigger>,
    pub rules: Vec<Rule>,
    /// `credentials` and `changes` as they are: (name, plain, stamp). See [`LOG_TABLES`].
    pub tables: Vec<(String, bool, String)>,
}

/// How much [`problems`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scope {
    /// What the change log needs (every read of it).
    ChangeLog,
    /// That, and no one else's trigger or rule on any vault table (`serve`'s start).
    Everything,
}

/// Reads the catalog (in the caller's snapshot).
pub(super) async fn read(client: &impl GenericClient) -> Result<Catalog, StoreError> {
    let tables: Vec<&str> = TABLES.to_vec();
    let mut catalog = Catalog::default();
    for r in client.query(TRIGGERS, &[&tables]).await? {
        catalog.triggers.push(Trigger {
            table: r.try_get(0)?,
            name: r.try_get(1)?,
            enabled: r.try_get(2)?,
            function: r.try_get(3)?,
            body: r.try_get(4)?,
            kind: r.try_get(5)?,
            all_columns: r.try_get::<_, Option<bool>>(6)?.unwrap_or(false),
            has_when: r.try_get(7)?,
            function_pinned: r.try_get::<_, Option<bool>>(8)?.unwrap_or(false),
            stamp: r.try_get(9)?,
        });
    }
    for r in client.query(RULES, &[&tables]).await? {
        catalog.rules.push(Rule { table: r.try_get(0)?, name: r.try_get(1)?, stamp: r.try_get(2)? });
    }
    for r in client.query(LOG_TABLES, &[]).await? {
        catalog.tables.push((r.try_get(0)?, r.try_get::<_, Option<bool>>(1)?.unwrap_or(false), r.try_get(2)?));
    }
    Ok(catalog)
}

/// Fails, naming each problem and its repair, unless [`problems`] finds none.
pub(super) fn check(catalog: &Catalog, scope: Scope) -> Result<(), StoreError> {
    let found = problems(catalog, scope);
    if found.is_empty() {
        return Ok(());
    }
    Err(StoreError::Corrupt(format!(
        "its change log was altered outside vault-server, and with it a replica could serve a \
         revoked or replaced code: {}",
        found.join("; ")
    )))
}

/// Changes whenever a trigger or rule of the vault's tables (or a trigger's function) is
/// written, dropped or added.
pub(super) fn stamp(catalog: &Catalog) -> String {
    let triggers = catalog.triggers.iter().map(|t| t.stamp.as_str());
    let rules = catalog.rules.iter().map(|r| r.stamp.as_str());
    let tables = catalog.tables.iter().map(|(_, _, stamp)| stamp.as_str());
    triggers.chain(rules).chain(tables).collect::<Vec<_>>().join(",")
}

/// What is wrong, worded with its repair; empty when nothing is.
pub(super) fn problems(catalog: &Catalog, scope: Scope) -> Vec<String> {
    let mut found = Vec::new();
    let recreate = "drop it and recreate it, and its function, as migrations/postgres/0001_init.sql and 0004 do";
    for (name, function, kind) in CHANGE_LOG {
        let Some(t) = catalog.triggers.iter().find(|t| t.table == "credentials" && t.name == name) else {
            found.push(format!("trigger {name} on credentials is missing (recreate it, and its function, as migrations/postgres/0001_init.sql and 0004 do)"));
            continue;
        };
        let same = t.function == function
            && Some(t.body.as_str()) == body_of(function)
            && t.function_pinned
            && t.kind == kind
            && t.all_columns
            && !t.has_when;
        if !same {
            found.push(format!("trigger {name} on credentials is not the one its migration made ({recreate})"));
        }
        let fires = match t.enabled.as_str() {
            "A" => continue,
            "D" => "is disabled",
            _ => "fires only in some sessions (by session_replication_role)",
        };
        found.push(format!(
            "trigger {name} on credentials {fires} (ALTER TABLE credentials ENABLE ALWAYS TRIGGER {name})"
        ));
    }
    for table in ["credentials", "changes"] {
        if !catalog.tables.iter().any(|(name, plain, _)| name == table && *plain) {
            found.push(format!(
                "{table} is not a plain, permanent table without row security or inheritance (as \
                 migrations/postgres/0001_init.sql makes it)"
            ));
        }
    }
    let ours = |t: &Trigger| t.table == "credentials" && CHANGE_LOG.iter().any(|(name, ..)| t.name == *name);
    // Anywhere while serving, one on `changes` could keep rows out of the log; at start, one on
    // any vault table could copy what the vault destroys.
    let watched = |table: &str| scope == Scope::Everything || table == "changes";
    for t in catalog.triggers.iter().filter(|t| !ours(t) && watched(&t.table)) {
        let (name, table) = (quoted(&t.name), quoted(&t.table));
        found.push(format!("trigger {name} on {table} is not the vault's (DROP TRIGGER {name} ON {table})"));
    }
    for r in catalog.rules.iter().filter(|r| watched(&r.table)) {
        let (name, table) = (quoted(&r.name), quoted(&r.table));
        found.push(format!("rule {name} on {table} is not the vault's (DROP RULE {name} ON {table})"));
    }
    found
}

/// The body (between `$$`) the last migration that defines `function` gives it.
fn body_of(function: &str) -> Option<&'static str> {
    let heads = [format!("CREATE FUNCTION {function}()"), format!("CREATE OR REPLACE FUNCTION {function}()")];
    MIGRATIONS.iter().rev().find_map(|sql| {
        let at = heads.iter().filter_map(|h| sql.rfind(h.as_str())).max()?;
        let rest = &sql[at..];
        let start = rest.find("$$")? + 2;
        let len = rest[start..].find("$$")?;
        Some(&rest[start..start + len])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours() -> Catalog {
        let triggers = CHANGE_LOG
            .iter()
            .enumerate()
            .map(|(i, (name, function, kind))| Trigger {
                table: "credentials".into(),
                name: (*name).into(),
                enabled: "A".into(),
                function: (*function).into(),
                body: body_of(function).unwrap().into(),
                kind: *kind,
                all_columns: true,
                has_when: false,
                function_pinned: true,
                stamp: format!("{i}:1"),
            })
            .collect();
        let tables = ["changes", "credentials"].iter().map(|t| ((*t).to_owned(), true, format!("{t}:1"))).collect();
        Catalog { triggers, rules: Vec::new(), tables }
    }

    #[test]
    fn the_migrations_triggers_pass_and_each_change_is_named_with_its_repair() {
        assert!(body_of("vault_note_change").unwrap().contains("INSERT INTO changes"));
        assert!(body_of("vault_note_truncate").unwrap().contains("INSERT INTO changes"));
        assert_eq!(problems(&ours(), Scope::Everything), Vec::<String>::new());

        let mut c = ours();
        c.triggers[0].enabled = "O".into();
        c.triggers[1].enabled = "D".into();
        c.triggers[2].body = "BEGIN RETURN NULL; END".into();
        let foreign = Trigger { table: "keyring".into(), name: "copy\"it".into(), ..ours().triggers[0].clone() };
        c.triggers.push(foreign);
        c.rules.push(Rule { table: "changes".into(), name: "drop_all".into(), stamp: "9:9".into() });
        c.rules.push(Rule { table: "credentials".into(), name: "keep".into(), stamp: "8:8".into() });
        let found = problems(&c, Scope::Everything);
        assert_eq!(found.len(), 6, "{found:?}");
        assert!(found[0].contains("credentials_insert_or_delete on credentials fires only in some sessions"));
        assert!(found[1].contains(
            "credentials_update on credentials is disabled (ALTER TABLE credentials ENABLE ALWAYS TRIGGER credentials_update)"
        ));
        assert!(found[2].contains("credentials_truncate on credentials is not the one its migration made"));
        assert!(found[3].contains("DROP TRIGGER \"copy\"\"it\" ON \"keyring\""), "{}", found[3]);
        assert!(found[4].contains("DROP RULE \"drop_all\" ON \"changes\""));
        assert!(found[5].contains("DROP RULE \"keep\" ON \"credentials\""));
        // While serving, only what the change log needs: a rule on `changes` counts, not one on
        // `credentials` or a trigger on `keyring`.
        let serving = problems(&c, Scope::ChangeLog);
        assert_eq!(serving.len(), 4, "{serving:?}");
        assert!(serving[3].contains("\"drop_all\""));

        let missing = Catalog { triggers: ours().triggers.into_iter().skip(1).collect(), ..ours() };
        assert!(
            problems(&missing, Scope::ChangeLog)[0].contains("credentials_insert_or_delete on credentials is missing")
        );
    }

    #[test]
    fn a_trigger_recreated_to_fire_on_less_is_not_the_vaults() {
        for edit in [
            (|t: &mut Trigger| t.kind = 1 | 4) as fn(&mut Trigger),
            |t| t.all_columns = false,
            |t| t.has_when = !t.has_when,
            |t| t.function_pinned = false,
            |t| t.function = "other".into(),
        ] {
            let mut c = ours();
            edit(&mut c.triggers[1]);
            let found = problems(&c, Scope::ChangeLog);
            assert_eq!(found.len(), 1, "{found:?}");
            assert!(found[0].contains("credentials_update on credentials is not the one its migration made"));
        }
        for i in 0..2 {
            let mut c = ours();
            c.tables[i].1 = false;
            assert!(problems(&c, Scope::ChangeLog)[0].contains("is not a plain, permanent table"));
            c.tables.remove(i);
            assert!(problems(&c, Scope::ChangeLog)[0].contains("is not a plain, permanent table"));
        }
    }

    #[test]
    fn the_stamp_moves_with_any_trigger_or_rule_written() {
        let base = stamp(&ours());
        let mut c = ours();
        c.triggers[1].stamp = "1:2".into();
        assert_ne!(stamp(&c), base);
        let mut c = ours();
        c.rules.push(Rule { table: "tokens".into(), name: "r".into(), stamp: "7:7".into() });
        assert_ne!(stamp(&c), base);
        let mut c = ours();
        c.tables[0].2 = "changes:2".into();
        assert_ne!(stamp(&c), base);
        assert_eq!(stamp(&ours()), base);
    }
}
