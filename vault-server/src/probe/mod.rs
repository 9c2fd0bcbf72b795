//! Login probes against a provider's real servers. Hosts come only from the provider registry.

mod connect;
mod imap;
mod imap_wire;
mod network;
mod report;
mod smtp;
mod tls;

pub use network::{NetworkProber, ProbeSettings};
pub use report::{FailedProbe, ProbeReport, sanitize};

use crate::outcome::ProbeOutcome;
pub use tls::{ProbeTls, ResolveOverride};

use crate::provider::Provider;
use crate::secret::AuthCode;

/// What a probe needs: which provider, as whom, with which code.
#[derive(Debug)]
pub struct ProbeRequest<'a> {
    pub provider: &'a Provider,
    pub login: &'a str,
    pub code: &'a AuthCode,
}

/// Tries a login and reports what happened: every failure to log in is an outcome. `Err` only
/// when the probe slots shared by the replicas cannot be read: before the IMAP login, or (when
/// SMTP is probed too) after it.
#[tonic::async_trait]
pub trait Prober: Send + Sync + 'static {
    async fn probe(&self, req: ProbeRequest<'_>) -> Result<ProbeReport, crate::store::StoreError>;
}

/// The IMAP probe alone on `stream` (the fuzz target's way in): its outcome and raw text.
pub(crate) async fn imap_outcome<S>(
    stream: S,
    provider: &Provider,
    login: &str,
    code: &AuthCode,
) -> (ProbeOutcome, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let step = imap::probe(stream, provider, login, code).await;
    (step.outcome, step.text)
}

/// One protocol step's result, before sanitising. `hint` overrides the provider's default.
#[derive(Debug)]
struct Step {
    outcome: ProbeOutcome,
    text: String,
    hint: Option<String>,
}

impl Step {
    fn new(outcome: ProbeOutcome, text: impl Into<String>) -> Self {
        Self { outcome, text: text.into(), hint: None }
    }
}
