//! SQLite's errors in the store's terms; nothing of rusqlite leaves this backend.

use rusqlite::ErrorCode;

use crate::store::StoreError;

/// Unique or primary-key violations (extended result codes).
const SQLITE_CONSTRAINT_PRIMARYKEY: i32 = 1555;
const SQLITE_CONSTRAINT_UNIQUE: i32 = 2067;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        let rusqlite::Error::SqliteFailure(failure, _) = &e else {
            return Self::Backend(e.to_string());
        };
        match failure.code {
            ErrorCode::ConstraintViolation
                if matches!(failure.extended_code, SQLITE_CONSTRAINT_PRIMARYKEY | SQLITE_CONSTRAINT_UNIQUE) =>
            {
                Self::AlreadyExists
            }
            ErrorCode::DiskFull => Self::Full,
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::ReadOnly
            | ErrorCode::CannotOpen
            | ErrorCode::SystemIoFailure
            | ErrorCode::PermissionDenied => Self::Unavailable(e.to_string()),
            ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => Self::Corrupt(e.to_string()),
            // Only the writer's authorizer refuses, and only work a trigger or view would do.
            ErrorCode::AuthorizationForStatementDenied => Self::Corrupt(
                "a trigger or view added to the database by hand took part in a write; the write was refused \
                 and nothing was written (the next start names it)"
                    .into(),
            ),
            _ => Self::Backend(e.to_string()),
        }
    }
}
