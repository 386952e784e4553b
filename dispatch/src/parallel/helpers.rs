//! Running a call's tasks on helper threads that stay awake between calls.
//!
//! Waking a sleeping thread costs 15–80 µs on the virtual machines this was measured
//! on (an empty rayon scope with one spawned job: 15 µs back to back, 84 µs after a
//! 200 µs pause), more than half of a 2-thread MobileNet 1×1 convolution. So helpers
//! do not go back to sleep when a call ends: each spins for the call's spin time
//! ([`crate::spin`], 200 µs by default, 0 to sleep at once) waiting for the next
//! call's tasks, as ONNX Runtime's and pthreadpool's workers do, and a call starts
//! new helpers (rayon jobs with the `rayon` feature, else OS threads) only for the
//! threads that are not already waiting or on their way.
//!
//! How a job reaches them, and how the caller knows it may return, is
//! [`super::handoff`]: the [`Exchange`] for the one call that holds it, a [`Gate`] for a
//! call that finds it taken (a concurrent or nested call). Either way the caller takes
//! tasks itself from the start, and it never waits for a helper that has not come: if
//! none comes (rayon's pool busy or blocked, no thread to be had), it does them all and
//! returns.
//!
//! A helper thread that cannot be had costs threads, never the call: rayon's global
//! pool that cannot start (no memory or no thread for its workers) makes qgemm use OS
//! threads from then on, and an OS thread that cannot start is a helper fewer.

use std::panic::resume_unwind;
#[cfg(feature = "rayon")]
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;
use std::sync::Arc;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::time::{Duration, Instant};

use qgemm_kernels::driver::{Scratch, ScratchNeeds};

use super::handoff::{Closing, Exchange, Gate, Job};
use crate::error::Result;
use crate::workspace::Workspace;

/// How long a helper waits for the next call's tasks before it returns its thread, in
/// nanoseconds: the spin time of the latest threaded call (see [`crate::spin`]).
static LINGER_NS: AtomicU64 = AtomicU64::new(crate::spin::DEFAULT_SPIN_TIME.as_nanos() as u64);

/// A call's threads: how many (the caller included), and how long its helpers spin
/// after it, in nanoseconds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Threads {
    pub count: usize,
    pub spin_ns: u64,
}

impl Threads {
    /// `count` threads with the process's spin time.
    #[cfg(test)]
    pub(crate) fn count(count: usize) -> Threads {
        Threads { count, spin_ns: crate::spin::for_call(None) }
    }
}

/// The most helpers of gated calls ([`Gate`]) queued and not yet started, all calls
/// together: past it, a gated call starts no more (it runs on fewer threads), so that
/// a blocked pool does not collect a job per call for as long as it stays blocked.
const MAX_QUEUED_GATE_HELPERS: usize = 256;

/// The exchange of the process's awake helpers.
static EXCHANGE: Exchange<Scratch> = Exchange {
    offered: AtomicPtr::new(ptr::null_mut()),
    entering: AtomicUsize::new(0),
    idle: AtomicUsize::new(0),
    pending: AtomicUsize::new(0),
    generation: AtomicU64::new(1),
    latest: AtomicU64::new(0),
};

/// Gate helpers queued and not started (see [`MAX_QUEUED_GATE_HELPERS`]).
static QUEUED_GATE_HELPERS: AtomicUsize = AtomicUsize::new(0);

/// A helper thread's loop: serve offered jobs, and return after [`LINGER_NS`]
/// without one (at once where it is 0).
fn helper() {
    EXCHANGE.arrive();
    let mut served = 0;
    let mut since = Instant::now();
    let mut polls = 0u32;
    loop {
        if EXCHANGE.poll(&mut served) {
            since = Instant::now();
            continue;
        }
        let linger = LINGER_NS.load(Relaxed);
        if linger == 0 {
            EXCHANGE.depart();
            return;
        }
        polls = polls.wrapping_add(1);
        // Check the clock every 64 polls, and let other threads run now and then.
        if polls.is_multiple_of(64) {
            if since.elapsed() > Duration::from_nanos(linger) {
                EXCHANGE.depart();
                return;
            }
            std::thread::yield_now();
        }
        std::hint::spin_loop();
    }
}

/// Starts `f` on another thread: a job on rayon's pool (the caller's pool if it runs
/// on one, else the global pool) with the `rayon` feature, else an OS thread. Returns
/// whether `f` will run; if not, it was dropped.
fn start(f: impl FnOnce() + Send + 'static) -> bool {
    #[cfg(feature = "rayon")]
    if rayon::current_thread_index().is_some() || pool::global_ready() {
        // `rayon::spawn` panics only where the global pool failed to start (in
        // another's first use, which `global_ready` cannot tell from a pool that
        // started): OS threads from then on.
        if catch_unwind(AssertUnwindSafe(|| rayon::spawn(f))).is_ok() {
            return true;
        }
        pool::global_failed();
        return false;
    }
    std::thread::Builder::new().name("qgemm-helper".into()).spawn(f).is_ok()
}

/// Whether rayon's global pool is there to take helpers.
#[cfg(feature = "rayon")]
mod pool {
    use std::error::Error;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

    /// Whether qgemm's start of the global pool found it running, decided once (calls
    /// that come meanwhile wait for the answer rather than race to their own).
    static STARTED: OnceLock<bool> = OnceLock::new();
    /// Set where `rayon::spawn` panicked all the same (see [`super::start`]).
    static FAILED: AtomicBool = AtomicBool::new(false);

    /// Whether rayon's global pool runs, starting it on first use as `rayon::spawn`
    /// would (the same default settings; an engine that configures the pool does so
    /// before its first use, as rayon requires), but with its error returned rather
    /// than a panic: rayon tries only once, so a pool that failed to start (no memory
    /// or no thread for its workers) never will, and qgemm then uses OS threads.
    pub(super) fn global_ready() -> bool {
        // An error with a source is this start's I/O error; without one, the pool was
        // started already (by the engine, or an earlier qgemm call).
        let started = STARTED.get_or_init(|| {
            rayon::ThreadPoolBuilder::new().build_global().map_or_else(|e| e.source().is_none(), |()| true)
        });
        *started && !FAILED.load(SeqCst)
    }

    /// The global pool turned out not to run.
    pub(super) fn global_failed() {
        FAILED.store(true, SeqCst);
    }
}

/// Runs `task(i, scratch)` for every `i` in `0..tasks` on up to `threads` threads, the
/// calling thread included, each with its own scratch from `workspace`, reserved first
/// for `needs`. Workers take the next task from a shared counter, so a thread that
/// starts late takes fewer, and the caller alone takes them all if no helper comes.
///
/// Returns when every task has run; a panic in a task reaches the caller.
///
/// # Errors
/// The scratch could not be allocated ([`ErrorKind::OutOfMemory`]): then no task has
/// run.
///
/// [`ErrorKind::OutOfMemory`]: crate::ErrorKind::OutOfMemory
pub(crate) fn run_tasks(
    tasks: usize,
    threads: Threads,
    workspace: &mut Workspace,
    needs: &ScratchNeeds,
    task: &(dyn Fn(usize, &mut Scratch) + Sync),
) -> Result<()> {
    let workers = threads.count.min(tasks).max(1);
    if workers > 1 {
        // The helpers of this call (and those already awake) spin for its time after it.
        LINGER_NS.store(threads.spin_ns, Relaxed);
    }
    workspace.reserve(workers, needs)?;
    let held = workspace.heap_size();
    run_reserved(tasks, workspace.sets(workers), task);
    debug_assert_eq!(workspace.heap_size(), held, "scratch grew past what was reserved for {needs:?}");
    Ok(())
}

/// [`run_tasks`] in scratch sets already reserved, one per worker.
fn run_reserved(tasks: usize, scratch: &mut [Scratch], task: &(dyn Fn(usize, &mut Scratch) + Sync)) {
    let workers = scratch.len();
    if workers == 1 {
        (0..tasks).for_each(|i| task(i, &mut scratch[0]));
        return;
    }
    let job = Job::new(EXCHANGE.generation(), tasks, scratch, task);
    match EXCHANGE.offer(&job) {
        Some(offered) => {
            for _ in 0..EXCHANGE.to_start(workers) {
                if !start(helper) {
                    EXCHANGE.not_started();
                }
            }
            job.work_as_caller();
            drop(offered);
        }
        // Another call holds the exchange: this one lets helpers in through a gate.
        None => run_gated(&job, workers - 1),
    }
    if let Some(payload) = job.take_panic() {
        resume_unwind(payload);
    }
}

/// `job` with up to `helpers` helpers queued for it, each let in through a gate if it
/// starts before the caller has done every task (see [`Gate`]).
fn run_gated(job: &Job<'_, Scratch>, helpers: usize) {
    let gate = Arc::new(Gate::new(job));
    let _closing = Closing(&gate);
    for _ in 0..helpers {
        if QUEUED_GATE_HELPERS.fetch_add(1, SeqCst) >= MAX_QUEUED_GATE_HELPERS {
            QUEUED_GATE_HELPERS.fetch_sub(1, SeqCst);
            break;
        }
        let gate = Arc::clone(&gate);
        let visit = move || {
            QUEUED_GATE_HELPERS.fetch_sub(1, SeqCst);
            gate.help();
        };
        if !start(visit) {
            QUEUED_GATE_HELPERS.fetch_sub(1, SeqCst);
            break;
        }
    }
    job.work_as_caller();
}
