//! Login probes against a provider's real server. Hosts come only from the provider registry.

mod imap;
mod report;
mod tls;

pub use imap::ImapProber;
pub use report::{ProbeOutcome, ProbeReport, sanitize};
pub use tls::{ProbeTls, ResolveOverride};

use crate::provider::{Endpoint, Provider};
use crate::secret::AuthCode;

/// What a probe needs: where to connect, as whom, with which code.
#[derive(Debug)]
pub struct ProbeRequest<'a> {
    pub provider: &'a Provider,
    pub endpoint: &'a Endpoint,
    pub login: &'a str,
    pub code: &'a AuthCode,
}

/// Tries a login and reports what happened. Never fails: every failure is an outcome.
#[tonic::async_trait]
pub trait Prober: Send + Sync + 'static {
    async fn probe(&self, req: ProbeRequest<'_>) -> ProbeReport;
}
