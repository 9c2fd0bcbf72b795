//! Where the vault's rows live, from `--database` and `--data-dir`: a data dir's SQLite file, or
//! a PostgreSQL database that several replicas share.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::RunError;
use crate::cli::DatabaseArgs;
use crate::crypto::{CryptoError, Kek, Keyring};
use crate::datadir::{self, DataDirError};
use crate::secret::Passphrase;
use crate::store::{PgStore, SqliteStore, Store, StoreError, UnlockMaterial};

/// The engine and where.
#[derive(Clone)]
pub enum Database {
    DataDir(PathBuf),
    Postgres { url: String, ca_file: Option<PathBuf> },
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

/// Names the database without its URL (which may hold a password).
impl std::fmt::Display for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::DataDir(dir) => write!(f, "data dir {}", dir.display()),
            Self::Postgres { .. } => f.write_str("the PostgreSQL database (--database)"),
        }
    }
}

impl Database {
    /// `--database sqlite:` needs `--data-dir`; a PostgreSQL URL takes none. The error never
    /// repeats the value (it may hold a password).
    pub fn from_args(args: &DatabaseArgs, data_dir: Option<&Path>) -> Result<Self, RunError> {
        let value = args.database.0.trim();
        if value == "sqlite:" || value.is_empty() {
            if args.database_ca_file.is_some() {
                return Err(RunError::Usage("--database-ca-file is for a PostgreSQL --database".into()));
            }
            return data_dir
                .map(|d| Self::DataDir(d.to_owned()))
                .ok_or_else(|| RunError::Usage("--data-dir is required (or a PostgreSQL --database URL)".into()));
        }
        if value.starts_with("postgres://") || value.starts_with("postgresql://") {
            if data_dir.is_some() {
                return Err(RunError::Usage(
                    "--data-dir and a PostgreSQL --database exclude each other: the rows live in the database".into(),
                ));
            }
            return Ok(Self::Postgres { url: value.to_owned(), ca_file: args.database_ca_file.clone() });
        }
        Err(RunError::Usage("--database must be `sqlite:` or a postgres:// URL".into()))
    }

    async fn connect(url: &str, ca_file: Option<&Path>) -> Result<PgStore, RunError> {
        PgStore::connect(url, ca_file).await.map_err(|e| RunError::Database(format!("PostgreSQL --database: {e}")))
    }

    /// `init`: a fresh keyring sealed under the passphrase, in a new data dir or an empty
    /// PostgreSQL database.
    pub async fn init(&self, passphrase: &Passphrase, now: i64) -> Result<(), RunError> {
        match self {
            Self::DataDir(dir) => Ok(datadir::init(dir, passphrase, now)?),
            Self::Postgres { url, ca_file } => {
                if datadir::too_short(passphrase) {
                    return Err(DataDirError::WeakPassphrase.into());
                }
                let store = Self::connect(url, ca_file.as_deref()).await?;
                let material = UnlockMaterial::generate(passphrase).map_err(|e| RunError::Database(e.to_string()))?;
                match store.create(&material, now).await {
                    Err(StoreError::AlreadyExists) => Err(RunError::Database(
                        "the PostgreSQL database already holds a vault; refusing to overwrite it".into(),
                    )),
                    other => Ok(other?),
                }
            }
        }
    }

    /// Opens the store without unlocking it (token list and revoke).
    pub async fn open(&self) -> Result<Arc<dyn Store>, RunError> {
        match self {
            Self::DataDir(dir) => {
                if !datadir::is_initialised(dir) {
                    return Err(DataDirError::NotInitialised(dir.clone()).into());
                }
                Ok(Arc::new(SqliteStore::open(&datadir::db_path(dir))?))
            }
            Self::Postgres { url, ca_file } => Ok(Arc::new(Self::connect(url, ca_file.as_deref()).await?)),
        }
    }

    /// Opens the store and unlocks its keyring; a wrong passphrase stops here.
    pub async fn unlock(&self, passphrase: &Passphrase) -> Result<(Arc<dyn Store>, Keyring, Kek), RunError> {
        match self {
            Self::DataDir(dir) => {
                let (store, keyring, kek) = datadir::unlock_keeping_kek(dir, passphrase)?;
                Ok((Arc::new(store), keyring, kek))
            }
            Self::Postgres { url, ca_file } => {
                let (store, keyring, kek) = unlock_postgres(url, ca_file.as_deref(), passphrase).await?;
                Ok((Arc::new(store), keyring, kek))
            }
        }
    }
}

/// Connects to a PostgreSQL vault and unlocks its keyring.
pub async fn unlock_postgres(
    url: &str,
    ca_file: Option<&Path>,
    passphrase: &Passphrase,
) -> Result<(PgStore, Keyring, Kek), RunError> {
    let store = Database::connect(url, ca_file).await?;
    let material = match crate::store::KeyMaterialStore::unlock_material(&store).await {
        Err(StoreError::NotInitialised) => {
            return Err(RunError::Database(
                "the PostgreSQL database holds no vault; run `vault-server init --database URL` first".into(),
            ));
        }
        other => other?,
    };
    let (keyring, kek) = material.open(passphrase).map_err(|e| match e {
        CryptoError::Decrypt => {
            RunError::Database("wrong passphrase for the PostgreSQL database: the keyring did not unlock".into())
        }
        e => RunError::Database(e.to_string()),
    })?;
    Ok((store, keyring, kek))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::DatabaseUrl;

    fn args(value: &str) -> DatabaseArgs {
        DatabaseArgs { database: DatabaseUrl(value.into()), database_ca_file: None }
    }

    #[test]
    fn the_database_flags_are_checked_and_never_repeated() {
        let dir = Path::new("d");
        assert!(matches!(Database::from_args(&args("sqlite:"), Some(dir)), Ok(Database::DataDir(_))));
        let none = Database::from_args(&args("sqlite:"), None).unwrap_err().to_string();
        assert!(none.contains("--data-dir is required"), "{none}");
        let url = "postgres://vault:s3cretpw@db:5432/vault";
        assert!(matches!(Database::from_args(&args(url), None), Ok(Database::Postgres { .. })));
        for (value, dir) in [(url, Some(dir)), ("postgre://vault:s3cretpw@db/vault", None), ("mysql://s3cretpw", None)]
        {
            let err = Database::from_args(&args(value), dir).unwrap_err().to_string();
            assert!(!err.contains("s3cretpw"), "{err}");
        }
        let shown = format!("{:?} {}", Database::from_args(&args(url), None).unwrap(), args(url).database.0.len());
        assert!(!shown.contains("s3cretpw"), "{shown}");
        assert!(!format!("{:?}", args(url)).contains("s3cretpw"));
    }
}
