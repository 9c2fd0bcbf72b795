//! PostgreSQL's errors in the store's terms; nothing of tokio-postgres leaves this backend. Only
//! the SQLSTATE and the server's message are kept: a DETAIL may quote a row's values.

use tokio_postgres::error::SqlState;

use crate::store::StoreError;

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        let Some(db) = e.as_db_error() else {
            // No answer from the server: the connection is gone or was never made.
            let io = std::error::Error::source(&e).is_some_and(<dyn std::error::Error>::is::<std::io::Error>);
            if e.is_closed() || io {
                return Self::Unavailable(format!("PostgreSQL: {e}"));
            }
            return Self::Backend(format!("PostgreSQL: {e}"));
        };
        let code = db.code();
        let text = format!("PostgreSQL {}: {}", code.code(), db.message());
        if *code == SqlState::UNIQUE_VIOLATION {
            Self::AlreadyExists
        } else if *code == SqlState::DISK_FULL {
            Self::Full
        } else if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED {
            Self::Conflict
        } else if code.code().starts_with("08") // connection exception
            || code.code().starts_with("57") // operator intervention (shutdown, cancel)
            || code.code().starts_with("53") // insufficient resources
            || *code == SqlState::READ_ONLY_SQL_TRANSACTION
            || *code == SqlState::LOCK_NOT_AVAILABLE
        {
            Self::Unavailable(text)
        } else if code.code().starts_with("XX") || *code == SqlState::DATA_CORRUPTED {
            Self::Corrupt(text)
        } else {
            Self::Backend(text)
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            e => Self::Unavailable(format!("PostgreSQL pool: {e}")),
        }
    }
}
