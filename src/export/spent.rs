//! Delivered records, handed back to the request path to be freed there.
//!
//! A record is allocated on the request path: a span with its strings and
//! attributes, or the JSON of a start or an end. It is delivered on the
//! delivery thread. If that thread freed it, the request threads would only
//! ever allocate this memory and the delivery thread only ever free it.
//! glibc's malloc serves a thread from a cache of the chunks that thread
//! freed; with a one-way flow, the request path's allocations miss that
//! cache and take malloc's slow path. So the worker leaves delivered records
//! here, and the next [`Exporter::send`](super::Exporter::send) takes them
//! and drops them after releasing the queue's lock.
//!
//! What waits here is bounded. Past [`MAX_ITEMS`] records the worker frees
//! the rest itself. Records that waited [`MAX_WAIT`] are freed by the worker
//! too: a server that goes quiet sends nothing that would take them.

use std::time::Duration;
use tokio::time::Instant;

use super::item::Item;

/// Most records waiting to be freed by the request path.
pub(crate) const MAX_ITEMS: usize = 256;
/// Longest a record waits here before the worker frees it.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(1);

/// Delivered records, waiting for the request path to free them.
#[derive(Debug, Default)]
pub(crate) struct Spent {
    batches: Vec<Vec<Item>>,
    items: usize,
    /// When the oldest of them was delivered.
    since: Option<Instant>,
}

impl Spent {
    /// Keeps a delivered batch's records for the request path, unless that
    /// would pass [`MAX_ITEMS`]: then they come back, for the caller to free.
    pub(crate) fn keep(&mut self, items: Vec<Item>, now: Instant) -> Option<Vec<Item>> {
        if self.items + items.len() > MAX_ITEMS {
            return Some(items);
        }
        self.items += items.len();
        self.since.get_or_insert(now);
        self.batches.push(items);
        None
    }

    /// Everything kept, for the request path to free.
    pub(crate) fn take(&mut self) -> Vec<Vec<Item>> {
        if self.batches.is_empty() {
            return Vec::new();
        }
        self.items = 0;
        self.since = None;
        std::mem::take(&mut self.batches)
    }

    /// Everything kept, if the oldest waited [`MAX_WAIT`] by `now`.
    pub(crate) fn take_expired(&mut self, now: Instant) -> Vec<Vec<Item>> {
        match self.deadline() {
            Some(deadline) if deadline <= now => self.take(),
            _ => Vec::new(),
        }
    }

    /// When the worker must free what is kept, if nobody took it before.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.since.map(|since| since + MAX_WAIT)
    }

    /// How many records are kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.items
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::item::{ItemKind, Payload};
    use uuid::Uuid;

    fn items(n: usize) -> Vec<Item> {
        (0..n)
            .map(|seq| Item {
                seq: seq as u64,
                run_id: Uuid::nil(),
                kind: ItemKind::Span,
                payload: Payload::Json(Box::from(&b"{}"[..])),
            })
            .collect()
    }

    #[test]
    fn keeps_batches_until_the_request_path_takes_them() {
        let now = Instant::now();
        let mut spent = Spent::default();
        assert!(spent.keep(items(3), now).is_none());
        assert!(spent.keep(items(2), now + MAX_WAIT / 2).is_none());
        assert_eq!(spent.len(), 5);
        assert_eq!(spent.deadline(), Some(now + MAX_WAIT), "from the oldest");
        let taken = spent.take();
        assert_eq!(taken.iter().map(Vec::len).collect::<Vec<_>>(), [3, 2]);
        assert_eq!(spent.len(), 0);
        assert_eq!(spent.deadline(), None);
        assert!(spent.take().is_empty());
    }

    #[test]
    fn gives_back_what_would_pass_the_bound() {
        let now = Instant::now();
        let mut spent = Spent::default();
        assert!(spent.keep(items(MAX_ITEMS - 1), now).is_none());
        let back = spent.keep(items(2), now).expect("over the bound");
        assert_eq!(back.len(), 2);
        assert_eq!(spent.len(), MAX_ITEMS - 1);
        assert!(spent.keep(items(1), now).is_none(), "one more still fits");
        assert_eq!(spent.len(), MAX_ITEMS);
    }

    #[test]
    fn expires_after_the_longest_wait() {
        let now = Instant::now();
        let mut spent = Spent::default();
        assert!(spent.keep(items(4), now).is_none());
        assert!(spent.take_expired(now + MAX_WAIT / 2).is_empty());
        assert_eq!(spent.len(), 4);
        let expired = spent.take_expired(now + MAX_WAIT);
        assert_eq!(expired.iter().map(Vec::len).sum::<usize>(), 4);
        assert_eq!(spent.len(), 0);
    }
}
