//! The worker's quota lease book ([`tollgate_core::lease`]) as the filter holds it: one per
//! worker root, shared with its request contexts, handed back on the tick.

use std::cell::{RefCell, RefMut};
use std::sync::atomic::{AtomicBool, Ordering};

use tollgate_core::lease::{join_workers, LeaseBook};
use tollgate_core::limits::CountError;
use tollgate_core::shared::StoreError;

use crate::host::{self, SharedData};

/// Whether this VM (one per worker thread) has counted itself among the workers; a new root
/// context after a configuration change must not count the same worker again.
static JOINED: AtomicBool = AtomicBool::new(false);

/// A new book, sized for the workers that have counted themselves so far (the tick re-reads).
pub fn worker_book() -> LeaseBook {
    let mut book = LeaseBook::new();
    if !JOINED.swap(true, Ordering::Relaxed) {
        match join_workers(&mut SharedData) {
            Ok(workers) => book.set_workers(workers),
            Err(CountError::Store(e)) => log::warn!("tollgate: cannot count this worker: {}", e.0),
            Err(CountError::Contention) => {
                log::warn!("tollgate: cannot count this worker: the workers key stayed busy")
            }
        }
    }
    book
}

/// The book for one request; a typed error instead of a panic should it be borrowed already.
pub fn book(leases: &RefCell<LeaseBook>) -> Result<RefMut<'_, LeaseBook>, StoreError> {
    leases.try_borrow_mut().map_err(|_| {
        StoreError("the worker's lease book is in use by another call on this worker".into())
    })
}

/// Returns idle and ended leases to the shared counters.
pub fn on_tick(leases: &RefCell<LeaseBook>) {
    let Ok(mut book) = leases.try_borrow_mut() else {
        return;
    };
    let returned = host::now_ms().and_then(|now_ms| book.on_tick(&mut SharedData, now_ms));
    if let Err(e) = returned {
        log::warn!("tollgate: quota leases not returned this tick: {}", e.0);
    }
}
