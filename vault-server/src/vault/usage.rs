//! Reveal usage, coalesced in memory so that a Reveal never waits on a disk write. Flushed
//! periodically, when [`FLUSH_AT`] windows are pending, and at shutdown, as one audit event per
//! (caller, pair) and window, together with the pairs' `last_used_at`. A crash loses at most one
//! window of usage, never a credential.

use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use hashbrown::{Equivalent, HashMap};

use crate::caller::Caller;
use crate::ids::{ClientId, Mailbox};
use crate::store::{AuditEvent, Millis};

/// Pending windows at which a flush is asked for early: with keys spread over a million
/// bindings nearly every Reveal opens a window, and memory must stay bounded (about 100 bytes
/// each).
pub const FLUSH_AT: usize = 100_000;

/// (caller, pair), compact: the caller by its index in [`Pending::callers`], the pair as one
/// string (`mailbox` then `client`, split at `split`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    caller: u32,
    split: u32,
    pair: Box<str>,
}

/// The same key, borrowed, so that a repeated use allocates nothing.
#[derive(Debug, Clone, Copy)]
struct KeyRef<'a> {
    caller: u32,
    mailbox: &'a str,
    client: &'a str,
}

impl Key {
    fn new(caller: u32, mailbox: &str, client: &str) -> Self {
        let split = u32::try_from(mailbox.len()).unwrap_or(u32::MAX);
        let mut pair = String::with_capacity(mailbox.len() + client.len());
        pair.push_str(mailbox);
        pair.push_str(client);
        Self { caller, split, pair: pair.into_boxed_str() }
    }

    fn parts(&self) -> (&str, &str) {
        self.pair.split_at(self.split as usize)
    }
}

impl From<&KeyRef<'_>> for Key {
    fn from(k: &KeyRef<'_>) -> Self {
        Key::new(k.caller, k.mailbox, k.client)
    }
}

/// Both hash the caller, then the mailbox's bytes, then the client's, the same way.
fn hash_parts<H: Hasher>(state: &mut H, caller: u32, mailbox: &str, client: &str) {
    state.write_u32(caller);
    state.write(mailbox.as_bytes());
    state.write_u8(0xff);
    state.write(client.as_bytes());
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let (mailbox, client) = self.parts();
        hash_parts(state, self.caller, mailbox, client);
    }
}

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_parts(state, self.caller, self.mailbox, self.client);
    }
}

impl Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        self.caller == key.caller && key.parts() == (self.mailbox, self.client)
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    count: u64,
    first: Millis,
    last: Millis,
}

impl Window {
    fn merge(&mut self, other: Window) {
        self.count += other.count;
        self.first = self.first.min(other.first);
        self.last = self.last.max(other.last);
    }
}

#[derive(Debug, Default)]
struct Pending {
    /// (token id, role) of every caller seen since the last take; a token has one role.
    callers: Vec<(String, String)>,
    /// Token id to its index in `callers`.
    indexes: HashMap<String, u32>,
    windows: HashMap<Key, Window>,
    /// A flush was asked for since the last take.
    asked: bool,
}

impl Pending {
    fn caller_index(&mut self, token_id: &str, role: impl FnOnce() -> String) -> u32 {
        if let Some(&i) = self.indexes.get(token_id) {
            return i;
        }
        let i = u32::try_from(self.callers.len()).unwrap_or(u32::MAX);
        self.callers.push((token_id.to_owned(), role()));
        self.indexes.insert(token_id.to_owned(), i);
        i
    }

    fn add(&mut self, key: KeyRef<'_>, w: Window) {
        self.windows.entry_ref(&key).and_modify(|p| p.merge(w)).or_insert_with(|| w);
    }
}

/// Windows taken for a flush, handed out as audit events (rpc `Reveal`) a batch at a time, so
/// that a large flush never holds them all as events at once. Those not handed out when it is
/// dropped (a flush cancelled between batches) go back to pending.
#[derive(Debug)]
pub struct Taken<'a> {
    usage: &'a Usage,
    callers: Vec<(String, String)>,
    windows: std::vec::IntoIter<(Key, Window)>,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if !self.is_empty() {
            let rest = self.batch(usize::MAX);
            self.usage.restore(rest);
        }
    }
}

impl Taken<'_> {
    pub fn is_empty(&self) -> bool {
        self.windows.len() == 0
    }

    /// The next `n` windows (fewer at the end) as audit events.
    pub fn batch(&mut self, n: usize) -> Vec<AuditEvent> {
        self.windows
            .by_ref()
            .take(n)
            .map(|(k, w)| {
                let (caller, role) = self.callers.get(k.caller as usize).cloned().unwrap_or_default();
                let (mailbox, client) = k.parts();
                AuditEvent {
                    at: w.last,
                    caller,
                    caller_role: role,
                    rpc: "Reveal".to_owned(),
                    mailbox: mailbox.to_owned(),
                    client: client.to_owned(),
                    outcome: "OK".to_owned(),
                    probe_outcome: None,
                    count: w.count,
                    first_at: w.first,
                    reason: String::new(),
                }
            })
            .collect()
    }

    /// All that is left, as audit events.
    #[cfg(test)]
    pub fn rest(mut self) -> Vec<AuditEvent> {
        self.batch(usize::MAX)
    }
}

#[derive(Debug, Default)]
pub struct Usage {
    pending: Mutex<Pending>,
    /// Woken when [`FLUSH_AT`] windows are pending.
    full: tokio::sync::Notify,
}

impl Usage {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts one Reveal.
    pub fn record(&self, caller: &Caller, mailbox: &Mailbox, client: &ClientId, now: Millis) {
        let mut pending = self.lock();
        let index = pending.caller_index(&caller.token_id, || caller.role.to_string());
        let key = KeyRef { caller: index, mailbox: mailbox.as_str(), client: client.as_str() };
        pending.add(key, Window { count: 1, first: now, last: now });
        // Once per take: after a failed flush the windows come back, and the next Reveal asks
        // again (the flush loop paces these).
        if pending.windows.len() >= FLUSH_AT && !pending.asked {
            pending.asked = true;
            self.full.notify_one();
        }
    }

    /// Resolves once [`FLUSH_AT`] windows are pending.
    pub async fn filled(&self) {
        self.full.notified().await;
    }

    /// Takes the pending windows, in (mailbox, client) order, to be written batch by batch.
    pub fn take(&self) -> Taken<'_> {
        let Pending { callers, windows, .. } = std::mem::take(&mut *self.lock());
        let mut windows: Vec<(Key, Window)> = windows.into_iter().collect();
        // In key order, each batch updates the rows page by page instead of all over the file.
        windows.sort_unstable_by(|(a, _), (b, _)| a.parts().cmp(&b.parts()));
        Taken { usage: self, callers, windows: windows.into_iter() }
    }

    /// Puts events back after a failed flush, merging with uses recorded since.
    pub fn restore(&self, events: Vec<AuditEvent>) {
        let mut pending = self.lock();
        for e in events {
            let role = e.caller_role;
            let caller = pending.caller_index(&e.caller, || role);
            let key = KeyRef { caller, mailbox: &e.mailbox, client: &e.client };
            pending.add(key, Window { count: e.count, first: e.first_at, last: e.at });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::auth::Role;

    #[test]
    #[allow(clippy::many_single_char_names)]
    fn coalesces_per_caller_and_pair() {
        let u = Usage::default();
        let a = Caller { token_id: "tk_a".into(), role: Role::Client(ClientId::parse("sender").unwrap()) };
        let b = Caller { token_id: "tk_b".into(), role: Role::Client(ClientId::parse("sender").unwrap()) };
        let (m, c) = (Mailbox::parse("a@sina.com").unwrap(), ClientId::parse("sender").unwrap());
        u.record(&a, &m, &c, 10);
        u.record(&a, &m, &c, 30);
        u.record(&a, &m, &c, 20);
        u.record(&b, &m, &c, 15);
        let mut events = u.take().rest();
        events.sort_by(|x, y| x.caller.cmp(&y.caller));
        assert_eq!(events.len(), 2);
        assert_eq!((events[0].count, events[0].first_at, events[0].at), (3, 10, 30));
        assert_eq!(events[1].count, 1);
        assert!(u.take().is_empty());
        u.restore(events);
        u.record(&a, &m, &c, 40);
        let again = u.take().rest();
        let a_events: Vec<_> = again.iter().filter(|e| e.caller == "tk_a").collect();
        assert_eq!((a_events[0].count, a_events[0].first_at, a_events[0].at), (4, 10, 40));
    }

    #[test]
    fn windows_not_handed_out_go_back_when_a_flush_is_dropped() {
        let u = Usage::default();
        let a = Caller { token_id: "tk_a".into(), role: Role::Client(ClientId::parse("sender").unwrap()) };
        let c = ClientId::parse("sender").unwrap();
        for i in 0..10 {
            u.record(&a, &Mailbox::parse(format!("m{i}@sina.com")).unwrap(), &c, 1);
        }
        let mut taken = u.take();
        assert_eq!(taken.batch(4).len(), 4);
        drop(taken);
        let left = u.take().rest();
        assert_eq!(left.len(), 6, "the windows not handed out were lost");
        assert!(left.iter().all(|e| e.caller == "tk_a" && e.caller_role == "client:sender" && e.count == 1));
    }

    #[tokio::test]
    async fn asks_for_a_flush_when_full() {
        let u = Usage::default();
        let a = Caller { token_id: "tk_a".into(), role: Role::Client(ClientId::parse("sender").unwrap()) };
        let c = ClientId::parse("sender").unwrap();
        for i in 0..FLUSH_AT - 1 {
            u.record(&a, &Mailbox::parse(format!("m{i}@sina.com")).unwrap(), &c, 1);
        }
        let wait = Duration::from_millis(50);
        assert!(tokio::time::timeout(wait, u.filled()).await.is_err(), "asked below FLUSH_AT");
        u.record(&a, &Mailbox::parse("last@sina.com").unwrap(), &c, 1);
        assert!(tokio::time::timeout(wait, u.filled()).await.is_ok(), "did not ask at FLUSH_AT");
        let mut taken = u.take();
        let first = taken.batch(10);
        assert!(first.windows(2).all(|w| w[0].mailbox < w[1].mailbox), "not in key order");
        let events = [first, taken.rest()].concat();
        assert_eq!(events.len(), FLUSH_AT);
        assert!(events.iter().all(|e| e.caller == "tk_a" && e.client == "sender" && e.mailbox.ends_with("@sina.com")));
        // The flush failed: the windows come back, and the next new pair asks once more.
        u.restore(events);
        u.record(&a, &Mailbox::parse("again@sina.com").unwrap(), &c, 1);
        assert!(tokio::time::timeout(wait, u.filled()).await.is_ok(), "did not ask after a failed flush");
        u.record(&a, &Mailbox::parse("more@sina.com").unwrap(), &c, 1);
        assert!(tokio::time::timeout(wait, u.filled()).await.is_err(), "asked twice for one take");
    }
}
