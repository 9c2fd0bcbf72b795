//! A fresh PostgreSQL database per unit test (see `tests/support/pg.rs`).

#[path = "../../../../tests/support/pg.rs"]
mod pg;

pub use pg::fresh_database;
