//! The worker's quota lease book ([`tollgate_core::lease`]) as the filter holds it: one per
//! worker VM, shared by its root contexts and their request contexts, handed back on the tick.

use std::cell::{RefCell, RefMut};
use std::rc::Rc;

use tollgate_core::lease::{join_workers, LeaseBook};
use tollgate_core::limits::CountError;
use tollgate_core::shared::StoreError;

use crate::host::{self, SharedData};

thread_local! {
    /// One book per VM (one VM per worker thread): a root context made for a new
    /// configuration takes over the leases of the one it replaces instead of stranding their
    /// reservations, and the worker counts itself among the workers once.
    static BOOK: Rc<RefCell<LeaseBook>> = Rc::new(RefCell::new(joined_book()));
}

/// This worker's book.
pub fn worker_book() -> Rc<RefCell<LeaseBook>> {
    BOOK.with(Rc::clone)
}

fn joined_book() -> LeaseBook {
    let book = LeaseBook::new();
    match join_workers(&mut SharedData) {
        Ok(_) => {}
        Err(CountError::Store(e)) => log::warn!("tollgate: cannot count this worker: {}", e.0),
        Err(CountError::Contention) => {
            log::warn!("tollgate: cannot count this worker: the workers key stayed busy")
        }
    }
    // The count is read at the book's first refill, once the other workers have started.
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
