//! Safe retries. Writes: each call gets a fresh request id, and a call whose answer was lost
//! with the connection is sent again with the same id, which the vault answers only once.
//! Reads: over several replicas, one that is unreachable or cannot serve is replaced by the
//! next.

use std::future::Future;
use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt as _;

use crate::{Error, VaultClient};

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
/// connection failed (the vault's own errors carry an ErrorInfo), or the vault lost its
/// database connection while committing the change (`STORAGE_OUTCOME_UNKNOWN`). Not a
/// deadline that expired (CANCELLED, DEADLINE_EXCEEDED): the caller set it, and a resend would
/// probe again.
fn lost_in_transit(s: &tonic::Status) -> bool {
    match s.code() {
        Code::Unavailable => s.get_details_error_info().is_none_or(|info| info.reason == "STORAGE_OUTCOME_UNKNOWN"),
        Code::Unknown => s.get_details_error_info().is_none(),
        _ => false,
    }
}

/// Whether another replica may answer a read: this one was not reached, did not answer within
/// the call's own timeout, or answered that it cannot serve now (not the provider being down:
/// every replica probes the same one). A read runs nothing twice, so asking again is safe.
fn another_may_answer(s: &tonic::Status) -> bool {
    match s.code() {
        Code::Unavailable => s.get_details_error_info().is_none_or(|info| !info.reason.starts_with("PROBE_")),
        Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => s.get_details_error_info().is_none(),
        _ => false,
    }
}

/// The longest `RetryInfo` delay honoured before asking the next replica.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(2);

/// Sends a read (Reveal, Get, a listing) to the replica whose turn it is, and to each next one
/// while they cannot answer, waiting what the vault's `RetryInfo` asks first.
pub(crate) async fn read<Req, Resp, F, Fut>(client: &VaultClient, req: Req, call: F) -> Result<Resp, Error>
where
    Req: Clone,
    F: Fn(crate::Inner, Req) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
{
    let (replicas, start) = client.turn();
    let mut attempt = 0;
    loop {
        match call(client.replica(start.wrapping_add(attempt)), req.clone()).await {
            Ok(r) => return Ok(r.into_inner()),
            Err(s) if attempt + 1 < replicas && another_may_answer(&s) => {
                if let Some(wait) = s.get_details_retry_info().and_then(|r| r.retry_delay) {
                    tokio::time::sleep(wait.min(MAX_RETRY_WAIT)).await;
                }
                attempt += 1;
            }
            Err(s) => return Err(s.into()),
        }
    }
}

/// Sends `req` through `call`, again with the same request id after a transport failure (to the
/// next replica, if there are several); once only if `request_id` is empty (no id: a resend
/// could run twice).
pub(crate) async fn write<Req, Resp, F, Fut>(
    client: &VaultClient,
    req: Req,
    request_id: &str,
    call: F,
) -> Result<Resp, Error>
where
    Req: Clone,
    F: Fn(crate::Inner, Req) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
{
    let attempts = if request_id.is_empty() { 1 } else { ATTEMPTS };
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 1;
    let (_, start) = client.turn();
    // Once a send was told its commit's outcome is unknown, a later send that cannot tell
    // either (the database still away) must not turn that into "nothing was changed".
    let mut unknown: Option<tonic::Status> = None;
    loop {
        match call(client.replica(start.wrapping_add(attempt as usize - 1)), req.clone()).await {
            Ok(r) => return Ok(r.into_inner()),
            Err(s) if attempt < attempts && lost_in_transit(&s) => {
                if outcome_unknown(&s) {
                    unknown = Some(s);
                }
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                attempt += 1;
            }
            Err(s) => return Err(unknown.filter(|_| !looked_up(&s)).unwrap_or(s).into()),
        }
    }
}

/// Whether an answer to a write was given after the vault looked its request id up (under the
/// pair's lock): then it tells what became of an earlier send with that id. Refusals that come
/// first (authentication, a deadline, the database or token table away) tell nothing.
fn looked_up(s: &tonic::Status) -> bool {
    match s.code() {
        Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::Aborted
        | Code::NotFound
        | Code::InvalidArgument
        | Code::DataLoss
        | Code::ResourceExhausted => true,
        Code::Unavailable => s.get_details_error_info().is_some_and(|i| i.reason.starts_with("PROBE_")),
        _ => false,
    }
}

/// Whether the vault said the write's commit may or may not have happened.
fn outcome_unknown(s: &tonic::Status) -> bool {
    s.code() == Code::Unavailable && s.get_details_error_info().is_some_and(|i| i.reason == "STORAGE_OUTCOME_UNKNOWN")
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
        // A commit whose answer the vault lost: resent with its id, which tells.
        let unknown = tonic::Status::with_error_details(
            Code::Unavailable,
            "the change may have been made",
            ErrorDetails::with_error_info("STORAGE_OUTCOME_UNKNOWN", "authcode-vault", HashMap::new()),
        );
        assert!(lost_in_transit(&unknown) && outcome_unknown(&unknown));
        assert!(!looked_up(&unknown), "an unknown outcome is no answer about an earlier send");
        assert!(matches!(Error::from(unknown), Error::OutcomeUnknown { .. }));
        // After an unknown outcome, only an answer given after the request id was looked up
        // replaces it: a revoked token or a deadline says nothing about the earlier send.
        assert!(looked_up(&tonic::Status::already_exists("bound")));
        for nothing in [
            tonic::Status::unauthenticated("revoked"),
            tonic::Status::deadline_exceeded("deadline"),
            tonic::Status::internal("storage failure"),
            tonic::Status::unavailable("transport error"),
        ] {
            assert!(!looked_up(&nothing), "{nothing:?}");
        }
    }

    /// Runs `write` against canned answers, one per send; returns its result and the sends made.
    async fn sends(request_id: &str, answers: Vec<Result<(), tonic::Status>>) -> (Result<(), Error>, usize) {
        let channel = tonic::transport::Channel::from_static("http://127.0.0.1:9").connect_lazy();
        let client = VaultClient::from_channel(channel, None).expect("no token to check");
        let queue = std::sync::Mutex::new(std::collections::VecDeque::from(answers));
        let sent = std::sync::atomic::AtomicUsize::new(0);
        let result = write(&client, (), request_id, |_, ()| {
            sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let next = queue.lock().expect("not poisoned").pop_front().expect("a canned answer per send");
            std::future::ready(next.map(tonic::Response::new))
        })
        .await;
        (result, sent.into_inner())
    }

    #[tokio::test]
    async fn an_unknown_outcome_stays_unknown_until_a_send_is_answered_after_its_id_was_looked_up() {
        let unknown = || {
            Err(tonic::Status::with_error_details(
                Code::Unavailable,
                "the change may have been made",
                ErrorDetails::with_error_info("STORAGE_OUTCOME_UNKNOWN", "authcode-vault", HashMap::new()),
            ))
        };
        let transport = || Err(tonic::Status::unavailable("transport error"));
        let id = "0123456789abcdef0123456789abcdef";
        // Run together: each waits out the backoffs (0.2 s, then 0.4 s).
        let (away, revoked, answered, replayed, never_reached, no_id) = tokio::join!(
            // The database still away on every resend: the first send's outcome is still unknown.
            sends(id, vec![unknown(), transport(), transport()]),
            // A refusal before the lookup (a revoked token) says nothing about the first send.
            sends(id, vec![unknown(), Err(tonic::Status::unauthenticated("revoked"))]),
            // An answer after the lookup tells: the pair is bound (by the first send or another).
            sends(id, vec![unknown(), Err(tonic::Status::already_exists("bound"))]),
            sends(id, vec![unknown(), Ok(())]),
            sends(id, vec![transport(), transport(), transport()]),
            sends("", vec![unknown()]),
        );
        assert!(matches!(away, (Err(Error::OutcomeUnknown { .. }), 3)), "{away:?}");
        assert!(matches!(revoked, (Err(Error::OutcomeUnknown { .. }), 2)), "{revoked:?}");
        assert!(matches!(answered, (Err(Error::AlreadyBound), 2)), "{answered:?}");
        assert!(matches!(replayed, (Ok(()), 2)), "{replayed:?}");
        assert!(matches!(never_reached, (Err(Error::VaultUnreachable { .. }), 3)), "{never_reached:?}");
        assert!(matches!(no_id, (Err(Error::OutcomeUnknown { .. }), 1)), "without an id, never resent: {no_id:?}");
    }

    #[test]
    fn a_read_goes_to_another_replica_only_when_this_one_cannot_serve() {
        let info = |code, reason: &str| {
            tonic::Status::with_error_details(
                code,
                "x",
                ErrorDetails::with_error_info(reason, "authcode-vault", HashMap::new()),
            )
        };
        assert!(another_may_answer(&tonic::Status::unavailable("transport error")));
        assert!(another_may_answer(&tonic::Status::unknown("connection reset")));
        assert!(another_may_answer(&info(Code::Unavailable, "STORAGE_UNAVAILABLE")));
        assert!(another_may_answer(&info(Code::Unavailable, "TOKENS_UNAVAILABLE")));
        assert!(!another_may_answer(&info(Code::Unavailable, "PROBE_UNREACHABLE")), "the provider is one for all");
        assert!(!another_may_answer(&info(Code::FailedPrecondition, "REVOKED")));
        assert!(!another_may_answer(&tonic::Status::not_found("no such binding")));
        assert!(another_may_answer(&tonic::Status::cancelled("Timeout expired")), "a replica that hangs");
        assert!(another_may_answer(&tonic::Status::deadline_exceeded("deadline")));
    }
}
