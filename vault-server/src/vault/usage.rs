//! Reveal usage, coalesced in memory so that a Reveal never waits on a disk write. Flushed
//! periodically and at shutdown as one audit event per (caller, pair) and window, together with
//! the pairs' `last_used_at`. A crash loses at most one window of usage, never a credential.

use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use hashbrown::{Equivalent, HashMap};

use crate::caller::Caller;
use crate::ids::{ClientId, Mailbox};
use crate::store::{AuditEvent, Millis};

/// (caller, pair). The role is not part of the key: a token has one role.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    caller: String,
    mailbox: String,
    client: String,
}

/// The same key, borrowed, so that a repeated use allocates nothing.
#[derive(Debug, Clone, Copy)]
struct KeyRef<'a> {
    caller: &'a str,
    mailbox: &'a str,
    client: &'a str,
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        KeyRef { caller: &self.caller, mailbox: &self.mailbox, client: &self.client }.hash(state);
    }
}

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.caller.hash(state);
        self.mailbox.hash(state);
        self.client.hash(state);
    }
}

impl Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        self.caller == key.caller && self.mailbox == key.mailbox && self.client == key.client
    }
}

impl From<&KeyRef<'_>> for Key {
    fn from(k: &KeyRef<'_>) -> Self {
        Self { caller: k.caller.to_owned(), mailbox: k.mailbox.to_owned(), client: k.client.to_owned() }
    }
}

#[derive(Debug, Clone)]
struct Window {
    caller_role: String,
    count: u64,
    first: Millis,
    last: Millis,
}

#[derive(Debug, Default)]
pub struct Usage {
    pending: Mutex<HashMap<Key, Window>>,
}

impl Usage {
    /// Counts one Reveal.
    pub fn record(&self, caller: &Caller, mailbox: &Mailbox, client: &ClientId, now: Millis) {
        let key = KeyRef { caller: &caller.token_id, mailbox: mailbox.as_str(), client: client.as_str() };
        let mut pending = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        pending
            .entry_ref(&key)
            .and_modify(|w| {
                w.count += 1;
                w.first = w.first.min(now);
                w.last = w.last.max(now);
            })
            .or_insert_with(|| Window { caller_role: caller.role.to_string(), count: 1, first: now, last: now });
    }

    /// Takes the window's aggregates as audit events (rpc `Reveal`).
    pub fn take(&self) -> Vec<AuditEvent> {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        pending
            .into_iter()
            .map(|(k, w)| AuditEvent {
                at: w.last,
                caller: k.caller,
                caller_role: w.caller_role,
                rpc: "Reveal".to_owned(),
                mailbox: k.mailbox,
                client: k.client,
                outcome: "OK".to_owned(),
                probe_outcome: None,
                count: w.count,
                first_at: w.first,
            })
            .collect()
    }

    /// Puts events back after a failed flush, merging with uses recorded since.
    pub fn restore(&self, events: Vec<AuditEvent>) {
        let mut pending = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for e in events {
            let key = Key { caller: e.caller, mailbox: e.mailbox, client: e.client };
            let w = Window { caller_role: e.caller_role, count: e.count, first: e.first_at, last: e.at };
            pending
                .entry(key)
                .and_modify(|p| {
                    p.count += w.count;
                    p.first = p.first.min(w.first);
                    p.last = p.last.max(w.last);
                })
                .or_insert(w);
        }
    }
}

#[cfg(test)]
mod tests {
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
        let mut events = u.take();
        events.sort_by(|x, y| x.caller.cmp(&y.caller));
        assert_eq!(events.len(), 2);
        assert_eq!((events[0].count, events[0].first_at, events[0].at), (3, 10, 30));
        assert_eq!(events[1].count, 1);
        assert!(u.take().is_empty());
        u.restore(events);
        u.record(&a, &m, &c, 40);
        let again = u.take();
        let a_events: Vec<_> = again.iter().filter(|e| e.caller == "tk_a").collect();
        assert_eq!((a_events[0].count, a_events[0].first_at, a_events[0].at), (4, 10, 40));
    }
}
