//! Caller authentication and roles: bearer tokens checked before a call takes a slot of the
//! vault's concurrency limit (see `server`), roles checked by each handler against the pair it
//! touches.

mod bearer;
mod throttle;
mod token_table;

pub use crate::caller::{AuthError, Caller, Role};
pub use bearer::Token;
/// Reading the `authorization` header, for the fuzz targets (not an API).
#[doc(hidden)]
pub use bearer::{check as check_token, from_header as token_from_header, holds_token};
pub use throttle::{FAILURE_BURST, FAILURES_PER_SEC, peer_key};
pub use token_table::{RELOAD_EVERY, Tokens, VOUCH_FOR, authentic, rekey};

use std::sync::Arc;

/// The caller that authentication attached to a request's extensions.
pub fn caller<T>(request: &tonic::Request<T>) -> Result<Arc<Caller>, AuthError> {
    request.extensions().get::<Arc<Caller>>().cloned().ok_or(AuthError::MissingToken)
}
