//! Caller authentication and roles: bearer tokens checked by one interceptor, roles checked by
//! each handler against the pair it touches.

mod role;
mod token;
mod tokens;

pub use role::{Caller, Role};
pub use token::Token;
pub use tokens::{RELOAD_EVERY, Tokens};

use std::sync::Arc;

use tonic::{Request, Status};

use crate::vault::{Clock, SystemClock};

/// Authenticates every call to the vault service and attaches its [`Caller`]. Health and
/// reflection are not wrapped, so `grpcurl list` works without a token.
#[derive(Clone)]
pub struct Authenticate(pub Arc<Tokens>);

impl tonic::service::Interceptor for Authenticate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let header = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
        let caller = self.0.authenticate(header, SystemClock.now_millis())?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// The caller the interceptor attached.
pub fn caller<T>(request: &Request<T>) -> Result<Arc<Caller>, Status> {
    request.extensions().get::<Arc<Caller>>().cloned().ok_or_else(|| Status::unauthenticated("no authenticated caller"))
}
