//! A fresh PostgreSQL database per test: on `VAULT_TEST_DATABASE_URL` if set (a `postgres://`
//! URL of a role that may CREATE DATABASE), else on a throwaway cluster that `tests/pg.sh`
//! starts once per test process (and stops when the process exits). Never skipped: without a
//! server, the test fails.

use std::sync::OnceLock;

/// The server's URL: from the environment, or the cluster this process started.
pub fn server_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("VAULT_TEST_DATABASE_URL") {
            return url;
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/pg.sh");
        let out = std::process::Command::new(script)
            .arg(std::process::id().to_string())
            .stderr(std::process::Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
        assert!(out.status.success(), "{script} failed: {}", out.status);
        String::from_utf8(out.stdout).unwrap_or_else(|e| panic!("{e}")).trim().to_owned()
    })
}

/// `url` with its database name replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..].find('/').map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{name}", &base[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Creates an empty database with a random name and returns its URL.
pub async fn fresh_database() -> String {
    let url = server_url();
    let (client, connection) =
        tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap_or_else(|e| panic!("PostgreSQL: {e}"));
    let task = tokio::spawn(connection);
    let name = format!("vault_test_{:016x}", rand::random::<u64>());
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap_or_else(|e| panic!("CREATE DATABASE: {e}"));
    drop(client);
    let _ = task.await;
    with_database(url, &name)
}
