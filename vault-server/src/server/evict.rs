//! Which connection gives way at the cap. A connection that has not yet carried an
//! authenticated call (handshaking, idle, or only asking health and reflection) holds its slot
//! only until the cap is reached: then the oldest such connection is closed to admit a new one.
//! So connections held open without a token cannot keep a caller with a token out, and a
//! connection that has authenticated once is never closed for room. (New connections opened
//! faster than the cap over a caller's time to its first call still can: README says so.)

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Waker};

/// One connection's standing, shared by its I/O and the calls it carries.
#[derive(Debug, Default)]
pub struct Standing {
    /// Set by the first call that authenticates; never cleared.
    authenticated: AtomicBool,
    /// Whether it was chosen to close, and who to wake when it is: under one lock, so a
    /// close cannot slip between a poll's check and its registration.
    closing: Mutex<Closing>,
}

#[derive(Debug, Default)]
struct Closing {
    chosen: bool,
    waker: Option<Waker>,
}

impl Standing {
    /// A call on this connection authenticated: it keeps its slot from now on, unless it was
    /// chosen to close first (then it closes all the same: its slot is promised to another).
    pub fn authenticated(&self) {
        if self.is_authenticated() {
            return;
        }
        // Under the lock, so that a choice and an authentication are ordered one way or the other.
        let closing = self.closing.lock().unwrap_or_else(PoisonError::into_inner);
        if !closing.chosen {
            self.authenticated.store(true, Ordering::Relaxed);
        }
    }

    fn is_authenticated(&self) -> bool {
        self.authenticated.load(Ordering::Relaxed)
    }

    /// Ready once this connection was chosen to close. An authenticated connection never is,
    /// and its I/O pays one atomic load per poll for asking.
    pub fn poll_closing(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_authenticated() {
            return Poll::Pending;
        }
        let mut closing = self.closing.lock().unwrap_or_else(PoisonError::into_inner);
        if closing.chosen {
            return Poll::Ready(());
        }
        if !closing.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            closing.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Chooses it to close; `false` if it authenticated meanwhile.
    fn close(&self) -> bool {
        let waker = {
            let mut closing = self.closing.lock().unwrap_or_else(PoisonError::into_inner);
            if self.is_authenticated() {
                return false;
            }
            closing.chosen = true;
            closing.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        true
    }
}

/// A connection's hold on its slot: owned by whatever holds the slot (the opening task, then
/// the connection's I/O) and by nothing else, so it ends when the slot is given back. (A
/// [`Standing`] can outlive it in the calls still running.)
#[derive(Debug)]
pub struct Held {
    pub standing: Arc<Standing>,
}

/// The open connections, oldest first, that may still be closed to make room.
#[derive(Debug, Default)]
pub struct Evictable {
    queue: Mutex<VecDeque<Weak<Held>>>,
}

impl Evictable {
    /// A new connection that holds its slot, youngest.
    pub fn admit(&self, cap: usize) -> Arc<Held> {
        let held = Arc::new(Held { standing: Arc::default() });
        let mut queue = self.lock();
        // Closed and authenticated ones leave lazily; prune when they outnumber the cap.
        if queue.len() >= cap.saturating_mul(2).max(16) {
            queue.retain(|w| w.upgrade().is_some_and(|h| !h.standing.is_authenticated()));
        }
        queue.push_back(Arc::downgrade(&held));
        held
    }

    /// Chooses the oldest connection still holding its slot that has not authenticated to
    /// close; `false` if there is none.
    pub fn close_oldest(&self) -> bool {
        let mut queue = self.lock();
        while let Some(weak) = queue.pop_front() {
            if let Some(held) = weak.upgrade()
                && held.standing.close()
            {
                return true;
            }
        }
        false
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Weak<Held>>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use super::*;

    #[test]
    fn the_oldest_unauthenticated_connection_is_chosen_and_an_authenticated_one_never() {
        let evictable = Evictable::default();
        let (a, b, c) = (evictable.admit(4), evictable.admit(4), evictable.admit(4));
        a.standing.authenticated();
        // b gave its slot back; a call still running on it keeps its standing.
        let b_call = b.standing.clone();
        drop(b);
        assert!(evictable.close_oldest(), "c was open and had not authenticated");
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(c.standing.poll_closing(&mut cx).is_ready());
        assert!(b_call.poll_closing(&mut cx).is_pending(), "a connection already gone was chosen");
        assert!(a.standing.poll_closing(&mut cx).is_pending());
        assert!(!evictable.close_oldest(), "only an authenticated connection is left");
        assert!(a.standing.poll_closing(&mut cx).is_pending());
    }

    #[test]
    fn a_connection_chosen_before_it_authenticates_still_closes() {
        let evictable = Evictable::default();
        let a = evictable.admit(4);
        assert!(evictable.close_oldest());
        a.standing.authenticated();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(a.standing.poll_closing(&mut cx).is_ready(), "its slot was promised to another connection");
    }

    #[test]
    fn closed_and_authenticated_connections_are_pruned() {
        let evictable = Evictable::default();
        for _ in 0..1000 {
            evictable.admit(4).standing.authenticated();
        }
        assert!(evictable.lock().len() <= 16, "{} entries kept", evictable.lock().len());
    }

    #[tokio::test]
    async fn a_waiting_connection_is_woken_when_chosen() {
        let evictable = Arc::new(Evictable::default());
        let held = evictable.admit(4);
        let waiting = tokio::spawn(async move { poll_fn(|cx| held.standing.poll_closing(cx)).await });
        tokio::task::yield_now().await;
        assert!(evictable.close_oldest());
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await.unwrap().unwrap();
    }
}
