//! Reveal usage, coalesced in memory so that a Reveal never waits on a disk write. Flushed
//! periodically and at shutdown as one audit event per (caller, pair) and window, together with
//! the pairs' `last_used_at`. A crash loses at most one window of usage, never a credential.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::auth::Caller;
use crate::ids::{ClientId, Mailbox};
use crate::store::{AuditEvent, Millis};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    caller: String,
    caller_role: String,
    mailbox: String,
    client: String,
}

#[derive(Debug, Clone, Copy)]
struct Window {
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
        let key = Key {
            caller: caller.token_id.clone(),
            caller_role: caller.role.to_string(),
            mailbox: mailbox.as_str().to_owned(),
            client: client.as_str().to_owned(),
        };
        let mut pending = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        pending
            .entry(key)
            .and_modify(|w| {
                w.count += 1;
                w.first = w.first.min(now);
                w.last = w.last.max(now);
            })
            .or_insert(Window { count: 1, first: now, last: now });
    }

    /// Takes the window's aggregates as audit events (rpc `Reveal`).
    pub fn take(&self) -> Vec<AuditEvent> {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        pending
            .into_iter()
            .map(|(k, w)| AuditEvent {
                at: w.last,
                caller: k.caller,
                caller_role: k.caller_role,
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
            let key = Key { caller: e.caller, caller_role: e.caller_role, mailbox: e.mailbox, client: e.client };
            let w = Window { count: e.count, first: e.first_at, last: e.at };
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
