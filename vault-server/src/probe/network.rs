//! The real prober: IMAP (and SMTP when enabled) against the provider's servers, under an
//! overall timeout and a per-host concurrency cap.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::connect::Connector;
use super::{ProbeOutcome, ProbeReport, ProbeRequest, Prober, Step, imap, sanitize, smtp};
use crate::provider::Endpoint;
use crate::store::StoreError;

/// How long a shared host slot outlives the probe's overall timeout (no probe holds one longer),
/// so a slot left behind (a replica that died mid-probe or stopped, a release lost to a
/// cancellation) blocks nobody for long.
const SLOT_GRACE: Duration = Duration::from_secs(5);
/// How often a probe waiting for another replica's slot asks again.
const SLOT_POLL: Duration = Duration::from_millis(50);
/// This process, among replicas holding slots.
static PROCESS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| format!("{:016x}", rand::random::<u64>()));
/// Where a probe is, so that its overall timeout says what it waited for: a free slot to the
/// IMAP host, the IMAP server, a slot to the SMTP host, the SMTP server.
const AT_IMAP_SLOT: u8 = 0;
const AT_IMAP: u8 = 1;
const AT_SMTP_SLOT: u8 = 2;
const AT_SMTP: u8 = 3;
/// Slots taken by this process so far: each holder is unique.
static SLOTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A shared host slot, given back when dropped.
struct SharedSlot {
    store: Arc<dyn crate::store::Store>,
    host: String,
    holder: String,
}

impl Drop for SharedSlot {
    fn drop(&mut self) {
        let (store, host, holder) =
            (self.store.clone(), std::mem::take(&mut self.host), std::mem::take(&mut self.holder));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = store.release_host_slot(host, holder).await {
                    tracing::warn!(error = %e, "could not give a shared probe slot back; it expires by itself");
                }
            });
        }
    }
}

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

pub struct NetworkProber {
    connector: Connector,
    settings: ProbeSettings,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Replicas on one database: the per-host cap is also taken there, so it holds for all.
    shared: Option<Arc<dyn crate::store::Store>>,
}

impl std::fmt::Debug for NetworkProber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkProber").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl NetworkProber {
    pub fn new(tls: super::ProbeTls, settings: ProbeSettings) -> Self {
        let connector = Connector::new(tls, settings.connect_timeout);
        Self { connector, settings, hosts: Mutex::new(HashMap::new()), shared: None }
    }

    /// Takes every host slot in `store` too (a shared database): the cap is one for all replicas.
    #[must_use]
    pub fn with_shared_slots(mut self, store: Arc<dyn crate::store::Store>) -> Self {
        self.shared = Some(store);
        self
    }

    /// The shared slot for `host`, polled until one is free; `Err` if the store cannot say.
    async fn shared_slot(&self, host: &str) -> Result<Option<SharedSlot>, crate::store::StoreError> {
        let Some(store) = &self.shared else { return Ok(None) };
        let cap = u32::try_from(self.settings.per_host_concurrency).unwrap_or(u32::MAX);
        let holder = format!("{}/{}", *PROCESS, SLOTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        // Made first: a probe cancelled while taking it still gives it back.
        let slot = SharedSlot { store: store.clone(), host: host.to_owned(), holder };
        let ttl = i64::try_from((self.settings.overall_timeout + SLOT_GRACE).as_millis()).unwrap_or(i64::MAX);
        while !store.take_host_slot(host, cap, &slot.holder, 0, ttl).await? {
            tokio::time::sleep(SLOT_POLL).await;
        }
        Ok(Some(slot))
    }

    fn host_slots(&self, host: &str) -> Arc<Semaphore> {
        let mut hosts = self.hosts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        hosts
            .entry(host.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.settings.per_host_concurrency)))
            .clone()
    }

    /// One endpoint, with its host's slot held for the duration (this process's, then the
    /// shared one). `Err` when the shared slots cannot be read: nothing was tried.
    async fn step(
        &self,
        endpoint: &Endpoint,
        req: &ProbeRequest<'_>,
        smtp: bool,
        phase: &AtomicU8,
    ) -> Result<Step, crate::store::StoreError> {
        phase.store(if smtp { AT_SMTP_SLOT } else { AT_IMAP_SLOT }, Ordering::Relaxed);
        let slots = self.host_slots(&endpoint.host);
        let Ok(_slot) = slots.acquire_owned().await else {
            return Ok(Step::new(ProbeOutcome::ProtocolError, "probe slots closed"));
        };
        let _shared = self.shared_slot(&endpoint.host).await.inspect_err(|e| {
            tracing::warn!(error = %e, "cannot take a shared probe slot; not probing");
        })?;
        phase.store(if smtp { AT_SMTP } else { AT_IMAP }, Ordering::Relaxed);
        let stream = match self.connector.connect(endpoint).await {
            Ok(s) => s,
            Err(step) => return Ok(step),
        };
        Ok(if smtp {
            smtp::probe(stream, req.provider, req.login, req.code).await
        } else {
            imap::probe(stream, req.provider, req.login, req.code).await
        })
    }

    /// IMAP, then SMTP when asked for: the step that decided, and the server(s) it ran against.
    /// `phase` follows where the probe is.
    async fn run(&self, req: &ProbeRequest<'_>, phase: &AtomicU8) -> Result<(Step, String), StoreError> {
        let p = req.provider;
        let imap = self.step(&p.imap, req, false, phase).await?;
        if imap.outcome != ProbeOutcome::Accepted || !(p.smtp_probe || self.settings.smtp_for_all) {
            return Ok(decided(p, imap, &p.imap, "IMAP"));
        }
        let smtp = self.step(&p.smtp, req, true, phase).await?;
        if smtp.outcome != ProbeOutcome::Accepted {
            return Ok(decided(p, smtp, &p.smtp, "SMTP"));
        }
        let text = format!("IMAP: {}; SMTP: {}", imap.text, smtp.text);
        Ok((Step::new(ProbeOutcome::Accepted, text), format!("{}, {}", p.imap, p.smtp)))
    }
}

/// The step that decided a probe, with a hint for the server it ran against (a step's own, more
/// specific one stays), and that server.
fn decided(p: &crate::provider::Provider, mut step: Step, server: &Endpoint, protocol: &str) -> (Step, String) {
    let hint = step.hint.take().unwrap_or_else(|| p.hint_at(step.outcome, server, protocol));
    (Step { hint: Some(hint), ..step }, server.to_string())
}

#[tonic::async_trait]
impl Prober for NetworkProber {
    async fn probe(&self, req: ProbeRequest<'_>) -> Result<ProbeReport, StoreError> {
        let started = Instant::now();
        let timeout = self.settings.overall_timeout;
        let phase = AtomicU8::new(AT_IMAP_SLOT);
        let (step, server) = if let Ok(r) = tokio::time::timeout(timeout, self.run(&req, &phase)).await {
            r?
        } else {
            // Said of what the probe was waiting for when time ran out.
            let p = req.provider;
            let at = phase.load(Ordering::Relaxed);
            let (server, protocol) = if at >= AT_SMTP_SLOT { (&p.smtp, "SMTP") } else { (&p.imap, "IMAP") };
            let step = if at == AT_IMAP_SLOT || at == AT_SMTP_SLOT {
                Step {
                    hint: Some(format!(
                        "Every probe slot to {} stayed taken until the probe's timeout ran out \
                         (--probe-host-concurrency, shared by the replicas); retry later.",
                        server.host
                    )),
                    ..Step::new(
                        ProbeOutcome::TimedOut,
                        format!("no free probe slot to {} within {timeout:?}", server.host),
                    )
                }
            } else {
                Step::new(ProbeOutcome::TimedOut, format!("no answer within {timeout:?}"))
            };
            decided(p, step, server, protocol)
        };
        Ok(ProbeReport {
            outcome: step.outcome,
            server,
            server_response: sanitize(&step.text, req.code.expose()),
            hint: step.hint.unwrap_or_else(|| req.provider.hint(step.outcome)),
            latency: started.elapsed(),
        })
    }
}
