//! The quarterly review's policy and the listings' paging, written once: the default window,
//! the cut-off, what "activity" means (the store's review index mirrors it), and the
//! limit-plus-one page fetch every listing uses.

use std::time::Duration;

use crate::store::{CredentialRow, Millis};

/// The review's default window: a quarter.
pub const DEFAULT_UNUSED_FOR: Duration = Duration::from_secs(90 * 24 * 3600);
/// Default and largest page sizes for listings.
pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 1000;

/// A binding's activity: its last use, else its binding time. The SQL of the review
/// (`coalesce(last_used_at, created_at)`) orders by the same value.
pub fn activity(row: &CredentialRow) -> Millis {
    row.last_used_at.unwrap_or(row.created_at)
}

/// Bindings with no activity at or after this are unused (`unused_for` defaults to a quarter).
pub fn cutoff(now: Millis, unused_for: Option<Duration>) -> Millis {
    let span = i64::try_from(unused_for.unwrap_or(DEFAULT_UNUSED_FOR).as_millis()).unwrap_or(i64::MAX);
    now.saturating_sub(span)
}

/// Where the next review page starts: after this row's (activity, mailbox, client).
pub fn position(row: &CredentialRow) -> (Millis, String, String) {
    (activity(row), row.mailbox.clone(), row.client.clone())
}

/// One page of a listing: at most the page size, and whether more follow.
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub more: bool,
}

impl<T> Page<T> {
    /// Cuts `fetched` (asked for with `limit + 1`) to `limit`, noting whether more followed.
    pub fn cut(mut fetched: Vec<T>, limit: usize) -> Self {
        let more = fetched.len() > limit;
        fetched.truncate(limit);
        Self { items: fetched, more }
    }

    /// The last item, if more follow (where the next page starts).
    pub fn next_after(&self) -> Option<&T> {
        if self.more { self.items.last() } else { None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_cut_at_the_limit_and_know_whether_more_follow() {
        let p = Page::cut(vec![1, 2, 3], 2);
        assert_eq!((p.items.as_slice(), p.more, p.next_after()), (&[1, 2][..], true, Some(&2)));
        let p = Page::cut(vec![1, 2], 2);
        assert_eq!((p.more, p.next_after()), (false, None));
    }

    #[test]
    fn the_cutoff_defaults_to_a_quarter_and_saturates() {
        let day = 24 * 3600 * 1000;
        assert_eq!(cutoff(100 * day, None), 10 * day);
        assert_eq!(cutoff(100 * day, Some(Duration::from_secs(3600))), 100 * day - 3_600_000);
        assert_eq!(cutoff(i64::MIN + 5, Some(Duration::MAX)), i64::MIN);
    }
}
