//! How one call's tasks reach helper threads, and how the call knows that no helper
//! can touch them any more, so that they may leave its stack: the protocol alone,
//! with no thread started here ([`super::helpers`] starts them).
//!
//! This file is also the loom model's subject: `dispatch/tests/loom_handoff.rs`
//! includes it as it is, with loom's atomics, `Arc`, `Mutex` and yield for `super::sync`
//! (see there for the command). Here `super::sync` is std's, with a spin-loop hint and
//! a [`Probe`](super::sync::Probe) that does nothing.
//!
//! Two ways in, both with every atomic operation `SeqCst`:
//!
//! **The exchange** ([`Exchange`]): helpers that stay awake between calls. One call at
//! a time offers its job there.
//!
//! ```text
//!   caller                                   helper (a 'static loop)
//!   ──────                                   ───────────────────────
//!   job on its stack: tasks, counters        spin reading LATEST until it changes
//!   OFFERED = &job  (one call at a time;     ENTERING += 1
//!     a concurrent call takes a gate)        p = OFFERED
//!   LATEST = the job's generation            if p is not null: p.active += 1
//!   start helpers the idle and pending       ENTERING −= 1
//!     ones don't cover                       take a scratch slot, take tasks
//!   take tasks until none is left            p.active −= 1   (p is not touched again)
//!   OFFERED = null                           spin for the next job, up to the spin time
//!   wait for ENTERING == 0
//!   wait for job.active == 0
//!   the job may now leave the stack
//! ```
//!
//! A helper touches a job only between `active += 1` and `active −= 1`, and it can
//! only increment while `ENTERING` is raised around a read of `OFFERED` that returned
//! the job: either that read came before the caller cleared `OFFERED`, and then the
//! caller's wait for `ENTERING == 0` comes after the increment (so its wait for
//! `active == 0` covers the helper), or it came after, and it read null.
//!
//! **A gate** ([`Gate`]): for a call that finds the exchange taken (another call, or
//! an outer call of this one). Its helpers are jobs queued on a pool that may be busy
//! or blocked, so they must not be waited for unless they came: each holds the gate
//! (shared, on the heap), not the job.
//!
//! ```text
//!   caller                                   helper (whenever it starts, if ever)
//!   ──────                                   ────────────────────────────────────
//!   gate = { state 0, &job }, on the heap    s = state += INSIDE
//!   queue helpers, each holding the gate     if s has no CLOSED: work on the job
//!   take tasks until none is left            state −= INSIDE  (the job is not
//!   state |= CLOSED                            touched again)
//!   wait for state == CLOSED (none inside)
//!   the job may now leave the stack
//! ```
//!
//! A helper that starts after `CLOSED` sees it in the value its own increment
//! returned and leaves without touching the job; one that started before is counted
//! in `state`, which the caller waits to see empty. A helper that never starts is
//! never waited for: that is what lets a call finish while the pool is blocked.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;

use super::sync::{AtomicPtr, AtomicU64, AtomicUsize, Mutex, Ordering::SeqCst, Probe, fence, spin};

/// One call's tasks, on the caller's stack while helpers may reach it.
pub(crate) struct Job<'a, S> {
    generation: u64,
    tasks: usize,
    /// The next task to take.
    next: AtomicUsize,
    /// The next scratch slot for a helper (slot 0 is the caller's).
    next_slot: AtomicUsize,
    slots: usize,
    /// `slots` scratch sets, each used by the one worker that took its slot.
    scratch: *mut S,
    /// Helpers inside the job, through the exchange.
    active: AtomicUsize,
    task: &'a (dyn Fn(usize, &mut S) + Sync),
    /// The first panic of a task on a helper, for the caller to resume.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    /// Every helper's access to the job reads it (the model checks that each comes
    /// before the caller is told the job is free); nothing in the library.
    pub(super) probe: Probe,
}

// SAFETY: the scratch pointer is only dereferenced for the slot a worker took from
// `next_slot` (each slot goes to one worker), whose `S` may move between threads;
// everything else is atomics, a `Sync` closure and a mutex.
unsafe impl<S: Send> Sync for Job<'_, S> {}

impl<'a, S> Job<'a, S> {
    /// A job of `tasks` tasks over the scratch sets in `scratch`, one per worker;
    /// `generation` tells the exchange's helpers apart from the previous job (see
    /// [`Exchange::generation`]; any value for a gate).
    pub(super) fn new(
        generation: u64,
        tasks: usize,
        scratch: &'a mut [S],
        task: &'a (dyn Fn(usize, &mut S) + Sync),
    ) -> Job<'a, S> {
        Job {
            generation,
            tasks,
            next: AtomicUsize::new(0),
            next_slot: AtomicUsize::new(1),
            slots: scratch.len(),
            scratch: scratch.as_mut_ptr(),
            active: AtomicUsize::new(0),
            task,
            panic: Mutex::new(None),
            probe: Probe::new(),
        }
    }

    /// The caller's part: takes tasks until none is left, in scratch slot 0.
    pub(super) fn work_as_caller(&self) {
        assert!(self.slots >= 1, "a job without the caller's scratch");
        // SAFETY: slot 0 exists and is the caller's; helpers take slots from 1.
        unsafe { self.work(0) }
    }

    /// Takes tasks until none is left, in scratch set `slot`.
    ///
    /// # Safety
    /// `slot < self.slots`, and no other worker uses that slot.
    unsafe fn work(&self, slot: usize) {
        // SAFETY: slot `slot` is inside the `slots` sets and this worker's alone.
        let scratch = unsafe { &mut *self.scratch.add(slot) };
        loop {
            let i = self.next.fetch_add(1, SeqCst);
            if i >= self.tasks {
                return;
            }
            (self.task)(i, scratch);
        }
    }

    /// A helper's part: a scratch slot if one is left, then tasks; a panic is kept
    /// for the caller, and stops the other workers taking tasks.
    fn help(&self) {
        self.probe.touch();
        let slot = self.next_slot.fetch_add(1, SeqCst);
        if slot >= self.slots {
            return;
        }
        // SAFETY: `slot` came from `next_slot`, below `slots`, so it is this helper's.
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| unsafe { self.work(slot) })) {
            self.next.store(self.tasks, SeqCst);
            let mut first = self.panic.lock().unwrap_or_else(|e| e.into_inner());
            first.get_or_insert(payload);
        }
    }

    /// The panic of a helper's task, if one panicked: the caller resumes it once no
    /// helper can reach the job.
    pub(super) fn take_panic(&self) -> Option<Box<dyn Any + Send>> {
        self.panic.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Where awake helpers find the current call's job (see the module's first diagram).
/// The library has one, in a static; the fields are set by its initializer.
pub(crate) struct Exchange<S: 'static> {
    /// The job offered to helpers, or null.
    pub(super) offered: AtomicPtr<Job<'static, S>>,
    /// Helpers between their read of `offered` and their entry into the job read.
    pub(super) entering: AtomicUsize,
    /// Helpers waiting for a job.
    pub(super) idle: AtomicUsize,
    /// Helpers started (queued on the pool) that have not arrived yet: counted as
    /// coming, so that a blocked pool does not collect more of them with every call.
    pub(super) pending: AtomicUsize,
    /// Numbers the jobs, so that a helper does not enter a job it already left.
    pub(super) generation: AtomicU64,
    /// The generation of the latest job offered: what idle helpers watch.
    pub(super) latest: AtomicU64,
}

/// A job offered on the exchange; dropping it withdraws the job, and returns once no
/// helper can reach it (also when the caller's own task panics).
pub(crate) struct Offered<'x, 'j, 'a, S: 'static> {
    exchange: &'x Exchange<S>,
    job: &'j Job<'a, S>,
}

impl<S> Drop for Offered<'_, '_, '_, S> {
    fn drop(&mut self) {
        self.exchange.offered.store(ptr::null_mut(), SeqCst);
        // The store above and the loads below against the helper's increment of
        // `entering` and load of `offered` (see `Exchange::poll`): a store-load pair
        // on each side, ordered by the fences (with every access `SeqCst` the single
        // total order gives this already; the fences state it in the form loom checks,
        // as loom treats `SeqCst` accesses as acquire-release).
        fence(SeqCst);
        while self.exchange.entering.load(SeqCst) != 0 {
            spin();
        }
        while self.job.active.load(SeqCst) != 0 {
            spin();
        }
    }
}

impl<S> Exchange<S> {
    /// A fresh generation for the next job.
    pub(super) fn generation(&self) -> u64 {
        self.generation.fetch_add(1, SeqCst)
    }

    /// Offers `job` to the helpers, unless another call holds the exchange (`None`).
    pub(super) fn offer<'x, 'j, 'a>(&'x self, job: &'j Job<'a, S>) -> Option<Offered<'x, 'j, 'a, S>> {
        let erased = ptr::from_ref(job).cast::<Job<'static, S>>().cast_mut();
        self.offered.compare_exchange(ptr::null_mut(), erased, SeqCst, SeqCst).ok()?;
        self.latest.store(job.generation, SeqCst);
        Some(Offered { exchange: self, job })
    }

    /// How many helpers the holder of the exchange should start for `workers` workers
    /// (itself included): those that no idle or pending helper covers. They count as
    /// pending from here; call [`Exchange::not_started`] for each that could not be.
    pub(super) fn to_start(&self, workers: usize) -> usize {
        let coming = self.idle.load(SeqCst) + self.pending.load(SeqCst);
        let n = workers.saturating_sub(1).saturating_sub(coming);
        self.pending.fetch_add(n, SeqCst);
        n
    }

    /// A helper counted by [`Exchange::to_start`] that will not come.
    pub(super) fn not_started(&self) {
        self.pending.fetch_sub(1, SeqCst);
    }

    /// A started helper begins to wait for jobs (it is idle, no longer pending).
    pub(super) fn arrive(&self) {
        self.idle.fetch_add(1, SeqCst);
        self.pending.fetch_sub(1, SeqCst);
    }

    /// A helper stops waiting for jobs.
    pub(super) fn depart(&self) {
        self.idle.fetch_sub(1, SeqCst);
    }

    /// One look for a job newer than `served`: enters and serves it if it is still
    /// offered, and returns whether it did.
    ///
    /// Until it sees a new generation it only reads `latest`, so that idle helpers
    /// share its cache line instead of fighting over it; it raises `entering` once
    /// per new job.
    pub(super) fn poll(&self, served: &mut u64) -> bool {
        let latest = self.latest.load(SeqCst);
        if latest == *served {
            return false;
        }
        *served = latest;
        self.entering.fetch_add(1, SeqCst);
        // Pairs with the caller's fence in `Offered::drop`.
        fence(SeqCst);
        let p = self.offered.load(SeqCst);
        // SAFETY: a non-null `offered` is a live job until its caller has seen
        // `entering == 0` after clearing it, and this helper holds `entering` up.
        let entered = (!p.is_null()).then(|| {
            // SAFETY: as above.
            let job = unsafe { &*p };
            job.probe.touch();
            job.active.fetch_add(1, SeqCst);
            job
        });
        self.entering.fetch_sub(1, SeqCst);
        let Some(job) = entered else { return false };
        *served = job.generation;
        self.idle.fetch_sub(1, SeqCst);
        job.help();
        // Idle again before leaving the job: once the caller sees the job empty, its
        // next call counts this helper as waiting (else it would start another, and
        // helpers would pile up past the threads asked).
        self.idle.fetch_add(1, SeqCst);
        job.probe.touch();
        // The last access to the job: the caller may free it from here on.
        job.active.fetch_sub(1, SeqCst);
        true
    }
}

/// Bit 0 of a gate's state: the caller has left (or is leaving); no helper enters.
const CLOSED: usize = 1;
/// A helper inside the job, in a gate's state.
const INSIDE: usize = 2;

/// A job's way in for helpers queued on a pool that may never run them (see the
/// module's second diagram). Shared between the caller and its helpers (an `Arc`),
/// so that it outlives the job.
pub(crate) struct Gate<S: 'static> {
    /// [`CLOSED`], plus [`INSIDE`] per helper inside or entering.
    state: AtomicUsize,
    job: *const Job<'static, S>,
}

// SAFETY: `job` is dereferenced only by a helper whose increment of `state` found the
// gate open, and the caller waits for every such helper to leave before the job may
// go; `Job` is `Sync` for `S: Send`.
unsafe impl<S: Send> Send for Gate<S> {}
// SAFETY: as for `Send`.
unsafe impl<S: Send> Sync for Gate<S> {}

impl<S> Gate<S> {
    /// An open gate to `job`. The caller must [`close`](Gate::close) it (or drop a
    /// [`Closing`]) before the job leaves its stack.
    pub(super) fn new(job: &Job<'_, S>) -> Gate<S> {
        Gate { state: AtomicUsize::new(0), job: ptr::from_ref(job).cast::<Job<'static, S>>() }
    }

    /// A helper's visit: works on the job if the caller has not left.
    pub(super) fn help(&self) {
        if self.state.fetch_add(INSIDE, SeqCst) & CLOSED == 0 {
            // SAFETY: the gate was open when this helper was counted in, so the
            // caller's `close` has not returned, and it waits for this helper's
            // decrement below before the job may go.
            let job = unsafe { &*self.job };
            job.help();
            job.probe.touch();
        }
        // The last access to the job (none if the gate was closed).
        self.state.fetch_sub(INSIDE, SeqCst);
    }

    /// Closes the gate and returns once no helper is inside: the job may go then.
    /// Helpers that have not come are not waited for.
    pub(super) fn close(&self) {
        self.state.fetch_or(CLOSED, SeqCst);
        while self.state.load(SeqCst) != CLOSED {
            spin();
        }
    }
}

/// Closes its gate when dropped, also when the caller's own task panics.
pub(crate) struct Closing<'g, S: 'static>(pub(super) &'g Gate<S>);

impl<S> Drop for Closing<'_, S> {
    fn drop(&mut self) {
        self.0.close();
    }
}
