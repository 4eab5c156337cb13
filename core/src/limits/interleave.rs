//! A deterministic scheduler for native concurrency tests: callers run on their own threads,
//! but only one at a time, and every shared-data call (and every clock read) is a point where
//! the schedule — a proptest-generated list — picks which waiting caller goes next and how far
//! the simulated clock moves. So each case is one reproducible interleaving of host calls, the
//! way Envoy's workers interleave around its shared-data mutex, and proptest shrinks a failing
//! interleaving to a small one.

use std::sync::{Condvar, Mutex, MutexGuard};

use crate::shared::{MemoryStore, SetOutcome, SharedStore, StoreError};

/// A shared-data call as the observer sees it, after it ran.
pub(crate) enum Call<'a> {
    Get { key: &'a str },
    Set { key: &'a str, outcome: SetOutcome },
}

/// What a test tracks alongside the store (its oracle), updated atomically with each call.
pub(crate) trait Observe {
    fn observe(&mut self, caller: usize, call: Call<'_>, store: &MemoryStore, clock_ms: u64);
}

/// One step of a schedule: which waiting caller goes next (modulo how many wait) and how many
/// milliseconds the clock advances first.
pub(crate) type Step = (u8, u16);

pub(crate) struct World<W> {
    pub store: MemoryStore,
    pub clock_ms: u64,
    pub extra: W,
    clock_end_ms: u64,
    running: usize,
    waiting: Vec<usize>,
    granted: Option<usize>,
    schedule: Vec<Step>,
    position: usize,
}

pub(crate) struct Scheduler<W> {
    world: Mutex<World<W>>,
    turn: Condvar,
}

impl<W: Observe + Send> Scheduler<W> {
    /// Runs `callers` threads, each calling `body(caller, &mut turns)`; the clock starts at
    /// `clock_ms` and never passes `clock_end_ms`. Returns the world when all have finished.
    pub(crate) fn run<F>(
        callers: usize,
        schedule: Vec<Step>,
        clock_ms: u64,
        clock_end_ms: u64,
        extra: W,
        body: F,
    ) -> World<W>
    where
        F: Fn(usize, &mut Turns<'_, W>) + Sync,
    {
        let schedule = if schedule.is_empty() {
            vec![(0, 0)]
        } else {
            schedule
        };
        let scheduler = Scheduler {
            world: Mutex::new(World {
                store: MemoryStore::new(),
                clock_ms,
                extra,
                clock_end_ms,
                running: callers,
                waiting: Vec::new(),
                granted: None,
                schedule,
                position: 0,
            }),
            turn: Condvar::new(),
        };
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..callers)
                .map(|caller| {
                    let scheduler = &scheduler;
                    let body = &body;
                    s.spawn(move || {
                        let mut turns = Turns { scheduler, caller };
                        body(caller, &mut turns);
                    })
                })
                .collect();
            let panics: Vec<_> = handles.into_iter().filter_map(|h| h.join().err()).collect();
            if let Some(panic) = panics.into_iter().next() {
                std::panic::resume_unwind(panic);
            }
        });
        scheduler
            .world
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn lock(&self) -> MutexGuard<'_, World<W>> {
        self.world.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until the schedule picks `caller`, then returns with the world locked.
    fn take_turn(&self, caller: usize) -> MutexGuard<'_, World<W>> {
        let mut world = self.lock();
        world.running -= 1;
        world.waiting.push(caller);
        world.grant_if_idle();
        self.turn.notify_all();
        while world.granted != Some(caller) {
            world = self.turn.wait(world).unwrap_or_else(|e| e.into_inner());
        }
        world.granted = None;
        world.waiting.retain(|c| *c != caller);
        world.running += 1;
        world
    }

    fn finish(&self) {
        let mut world = self.lock();
        world.running -= 1;
        world.grant_if_idle();
        self.turn.notify_all();
    }
}

impl<W> World<W> {
    fn grant_if_idle(&mut self) {
        if self.running > 0 || self.granted.is_some() || self.waiting.is_empty() {
            return;
        }
        // Sorted, so the pick depends on the schedule only, not on thread timing.
        self.waiting.sort_unstable();
        let (who, advance) = self.schedule[self.position % self.schedule.len()];
        self.position += 1;
        self.clock_ms = (self.clock_ms + u64::from(advance)).min(self.clock_end_ms);
        self.granted = Some(self.waiting[usize::from(who) % self.waiting.len()]);
    }
}

/// One caller's access to the world: a [`SharedStore`] whose every call waits for its turn.
pub(crate) struct Turns<'s, W: Observe + Send> {
    scheduler: &'s Scheduler<W>,
    caller: usize,
}

impl<W: Observe + Send> Turns<'_, W> {
    /// Reads the simulated clock (a scheduling point) and lets `f` see the world meanwhile.
    pub(crate) fn now<R>(&mut self, f: impl FnOnce(&mut World<W>) -> R) -> R {
        let mut world = self.scheduler.take_turn(self.caller);
        f(&mut world)
    }
}

impl<W: Observe + Send> Drop for Turns<'_, W> {
    fn drop(&mut self) {
        self.scheduler.finish();
    }
}

impl<W: Observe + Send> SharedStore for Turns<'_, W> {
    fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        let mut guard = self.scheduler.take_turn(self.caller);
        let world = &mut *guard;
        let found = world.store.get(key)?;
        let clock = world.clock_ms;
        world
            .extra
            .observe(self.caller, Call::Get { key }, &world.store, clock);
        Ok(found)
    }

    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<SetOutcome, StoreError> {
        let mut guard = self.scheduler.take_turn(self.caller);
        let world = &mut *guard;
        let outcome = world.store.set(key, value, cas)?;
        let clock = world.clock_ms;
        world
            .extra
            .observe(self.caller, Call::Set { key, outcome }, &world.store, clock);
        Ok(outcome)
    }
}
