//! Test support: bytes whose memory tells when it is freed, to show who
//! holds a share of a buffer (hyper's read buffer, a response chunk).

use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether the memory under some [`watched`] bytes was freed.
#[derive(Debug, Clone)]
pub(crate) struct Freed(Arc<AtomicBool>);

impl Freed {
    pub(crate) fn is_freed(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The owner of the memory: notes its drop.
struct Owner {
    data: Vec<u8>,
    freed: Freed,
}

impl AsRef<[u8]> for Owner {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.freed.0.store(true, Ordering::Release);
    }
}

/// `data` as [`Bytes`], and what tells when its memory is freed (once the
/// last share of it is dropped).
pub(crate) fn watched(data: impl Into<Vec<u8>>) -> (Bytes, Freed) {
    let freed = Freed(Arc::new(AtomicBool::new(false)));
    let bytes = Bytes::from_owner(Owner {
        data: data.into(),
        freed: freed.clone(),
    });
    (bytes, freed)
}
