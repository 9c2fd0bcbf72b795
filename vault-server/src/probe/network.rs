//! The real prober: IMAP (and SMTP when enabled) against the provider's servers, under an
//! overall timeout and a per-host concurrency cap.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::connect::Connector;
use super::{ProbeOutcome, ProbeReport, ProbeRequest, Prober, Step, imap, sanitize, smtp};
use crate::provider::Endpoint;

/// Probe settings from the command line.
#[derive(Debug, Clone)]
pub struct ProbeSettings {
    pub connect_timeout: Duration,
    pub overall_timeout: Duration,
    /// Probes at once against one host.
    pub per_host_concurrency: usize,
    /// Also probe SMTP AUTH for every provider, not only those that ask for it.
    pub smtp_for_all: bool,
}

#[derive(Debug)]
pub struct NetworkProber {
    connector: Connector,
    settings: ProbeSettings,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl NetworkProber {
    pub fn new(tls: super::ProbeTls, settings: ProbeSettings) -> Self {
        Self { connector: Connector::new(tls, settings.connect_timeout), settings, hosts: Mutex::new(HashMap::new()) }
    }

    fn host_slots(&self, host: &str) -> Arc<Semaphore> {
        let mut hosts = self.hosts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        hosts
            .entry(host.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.settings.per_host_concurrency)))
            .clone()
    }

    /// One endpoint, with its host's slot held for the duration.
    async fn step(&self, endpoint: &Endpoint, req: &ProbeRequest<'_>, smtp: bool) -> Step {
        let slots = self.host_slots(&endpoint.host);
        let Ok(_slot) = slots.acquire_owned().await else {
            return Step::new(ProbeOutcome::ProtocolError, "probe slots closed");
        };
        let stream = match self.connector.connect(endpoint).await {
            Ok(s) => s,
            Err(step) => return step,
        };
        if smtp {
            smtp::probe(stream, req.provider, req.login, req.code).await
        } else {
            imap::probe(stream, req.provider, req.login, req.code).await
        }
    }

    async fn run(&self, req: &ProbeRequest<'_>) -> (Step, String) {
        let p = req.provider;
        let imap = self.step(&p.imap, req, false).await;
        if imap.outcome != ProbeOutcome::Accepted || !(p.smtp_probe || self.settings.smtp_for_all) {
            return (imap, p.imap.to_string());
        }
        let smtp = self.step(&p.smtp, req, true).await;
        if smtp.outcome != ProbeOutcome::Accepted {
            return (smtp, p.smtp.to_string());
        }
        let text = format!("IMAP: {}; SMTP: {}", imap.text, smtp.text);
        (Step::new(ProbeOutcome::Accepted, text), format!("{}, {}", p.imap, p.smtp))
    }
}

#[tonic::async_trait]
impl Prober for NetworkProber {
    async fn probe(&self, req: ProbeRequest<'_>) -> ProbeReport {
        let started = Instant::now();
        let timeout = self.settings.overall_timeout;
        let (step, server) = match tokio::time::timeout(timeout, self.run(&req)).await {
            Ok(r) => r,
            Err(_) => (
                Step::new(ProbeOutcome::TimedOut, format!("no answer within {timeout:?}")),
                req.provider.imap.to_string(),
            ),
        };
        ProbeReport {
            outcome: step.outcome,
            server,
            server_response: sanitize(&step.text, req.code.expose()),
            hint: step.hint.unwrap_or_else(|| req.provider.hint(step.outcome)),
            latency: started.elapsed(),
        }
    }
}
