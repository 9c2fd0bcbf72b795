//! PostgreSQL for the replica tests (see `tests/support/pg.rs`).

#[path = "../../support/pg.rs"]
mod support;

pub use support::fresh_database;
