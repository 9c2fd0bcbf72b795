//! Safe retries of writes: each call gets a fresh request id, and a call whose answer was lost
//! with the connection is sent again with the same id, which the vault answers only once.

use std::future::Future;
use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt as _;

use crate::{Error, Inner};

/// Sends of one write at most.
const ATTEMPTS: u32 = 3;
const HEX: &[u8; 16] = b"0123456789abcdef";
/// Wait before the first resend; doubled for the next.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// 128 random bits, hex: unique per call, as the vault requires per caller token.
pub(crate) fn request_id() -> String {
    let mut bytes = [0u8; 16];
    // Without OS randomness the call goes without an id (not retried safely) rather than failing.
    if getrandom::getrandom(&mut bytes).is_err() {
        return String::new();
    }
    bytes.iter().flat_map(|b| [char::from(HEX[usize::from(b >> 4)]), char::from(HEX[usize::from(b & 15)])]).collect()
}

/// Whether the call may never have reached the vault, or its answer never came back: the
/// connection failed (the vault's own errors carry an ErrorInfo). Not a deadline that expired
/// (CANCELLED, DEADLINE_EXCEEDED): the caller set it, and a resend would probe again.
fn lost_in_transit(s: &tonic::Status) -> bool {
    matches!(s.code(), Code::Unavailable | Code::Unknown) && s.get_details_error_info().is_none()
}

/// Sends `req` through `call`, again with the same request id after a transport failure; once
/// only if `request_id` is empty (no id: a resend could run twice).
pub(crate) async fn write<Req, Resp, F, Fut>(inner: &Inner, req: Req, request_id: &str, call: F) -> Result<Resp, Error>
where
    Req: Clone,
    F: Fn(Inner, Req) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
{
    let attempts = if request_id.is_empty() { 1 } else { ATTEMPTS };
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 1;
    loop {
        match call(inner.clone(), req.clone()).await {
            Ok(r) => return Ok(r.into_inner()),
            Err(s) if attempt < attempts && lost_in_transit(&s) => {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                attempt += 1;
            }
            Err(s) => return Err(s.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tonic_types::ErrorDetails;

    use super::*;

    #[test]
    fn ids_are_fresh_and_well_formed() {
        let (a, b) = (request_id(), request_id());
        assert_ne!(a, b);
        assert!(a.len() == 32 && a.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
    }

    #[test]
    fn only_transport_failures_are_resent() {
        assert!(lost_in_transit(&tonic::Status::unavailable("transport error")));
        assert!(lost_in_transit(&tonic::Status::unknown("h2 protocol error")));
        let provider_down = tonic::Status::with_error_details(
            Code::Unavailable,
            "imap.sina.com:993 unreachable",
            ErrorDetails::with_error_info("PROBE_UNREACHABLE", "authcode-vault", HashMap::new()),
        );
        assert!(!lost_in_transit(&provider_down));
        assert!(!lost_in_transit(&tonic::Status::already_exists("bound")));
        assert!(!lost_in_transit(&tonic::Status::cancelled("Timeout expired")), "the caller's own deadline");
        assert!(!lost_in_transit(&tonic::Status::deadline_exceeded("deadline")));
    }
}
