//! Running a call's tasks on helper threads that stay awake between calls.
//!
//! Waking a sleeping thread costs 15–80 µs on the virtual machines this was measured
//! on (an empty rayon scope with one spawned job: 15 µs back to back, 84 µs after a
//! 200 µs pause), more than half of a 2-thread MobileNet 1×1 convolution. So helpers
//! do not go back to sleep when a call ends: each spins for [`LINGER`] waiting for the
//! next call's tasks, as ONNX Runtime's and pthreadpool's workers do, and a call wakes
//! new helpers (rayon jobs with the `rayon` feature, else OS threads) only for the
//! threads that are not already waiting.
//!
//! The hand-off, with every atomic operation `SeqCst`:
//!
//! ```text
//!   caller                                   helper (a 'static loop)
//!   ──────                                   ───────────────────────
//!   job on its stack: tasks, counters        spin reading LATEST until it changes
//!   OFFERED = &job  (one call at a time;     ENTERING += 1
//!     a concurrent call runs scoped)         p = OFFERED
//!   LATEST = the job's generation            if p is not null: p.active += 1
//!   spawn helpers the idle ones don't cover  ENTERING −= 1
//!   take tasks until none is left            take a scratch slot, take tasks
//!   OFFERED = null                           p.active −= 1   (p is not touched again)
//!   wait for ENTERING == 0                   spin for the next job, up to LINGER
//!   wait for job.active == 0
//!   the job may now leave the stack
//! ```
//!
//! A helper touches a job only between `active += 1` and `active −= 1`, and it can
//! only increment while `ENTERING` is raised around a read of `OFFERED` that returned
//! the job: either that read came before the caller cleared `OFFERED`, and then the
//! caller's wait for `ENTERING == 0` comes after the increment (so its wait for
//! `active == 0` covers the helper), or it came after, and it read null.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::ptr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use qgemm_kernels::driver::Scratch;

use crate::workspace::Workspace;

/// How long a helper waits for the next call's tasks before it returns its thread.
pub const LINGER: Duration = Duration::from_micros(200);

/// The job offered to helpers, or null.
static OFFERED: AtomicPtr<Job<'static>> = AtomicPtr::new(ptr::null_mut());
/// Helpers between their read of [`OFFERED`] and their entry into the job read.
static ENTERING: AtomicUsize = AtomicUsize::new(0);
/// Helpers waiting for a job.
static IDLE: AtomicUsize = AtomicUsize::new(0);
/// Numbers the jobs, so that a helper does not enter a job it already left.
static GENERATION: AtomicU64 = AtomicU64::new(1);
/// The generation of the latest job offered: what idle helpers watch.
static LATEST: AtomicU64 = AtomicU64::new(0);

/// One call's tasks, on the caller's stack while helpers may reach it.
struct Job<'a> {
    generation: u64,
    tasks: usize,
    /// The next task to take.
    next: AtomicUsize,
    /// The next scratch slot for a helper (slot 0 is the caller's).
    next_slot: AtomicUsize,
    slots: usize,
    /// `slots` scratch sets, each used by the one worker that took its slot.
    scratch: *mut Scratch,
    /// Helpers inside the job.
    active: AtomicUsize,
    task: &'a (dyn Fn(usize, &mut Scratch) + Sync),
    /// The first panic of a task on a helper, for the caller to resume.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

// SAFETY: the scratch pointer is only dereferenced for the slot a worker took from
// `next_slot` (each slot goes to one worker), and everything else is atomics, a
// `Sync` closure and a mutex.
unsafe impl Sync for Job<'_> {}

impl Job<'_> {
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
}

/// Clears [`OFFERED`] and waits until no helper can reach `job`, also when the
/// caller's own task panics.
struct Withdraw<'j, 'a>(&'j Job<'a>);

impl Drop for Withdraw<'_, '_> {
    fn drop(&mut self) {
        OFFERED.store(ptr::null_mut(), SeqCst);
        while ENTERING.load(SeqCst) != 0 {
            std::hint::spin_loop();
        }
        while self.0.active.load(SeqCst) != 0 {
            std::hint::spin_loop();
        }
    }
}

/// A helper thread's loop: serve offered jobs, and return after [`LINGER`] without
/// one.
///
/// While idle it only reads [`LATEST`], so that idle helpers share its cache line
/// instead of fighting over it; it raises [`ENTERING`] once per new job.
fn helper() {
    IDLE.fetch_add(1, SeqCst);
    let mut served = 0;
    let mut since = Instant::now();
    let mut polls = 0u32;
    loop {
        let latest = LATEST.load(SeqCst);
        if latest != served {
            served = latest;
            ENTERING.fetch_add(1, SeqCst);
            let p = OFFERED.load(SeqCst);
            // SAFETY: a non-null `OFFERED` is a live job until its caller has seen
            // `ENTERING == 0` after clearing it, and this helper holds `ENTERING` up.
            let entered = (!p.is_null()).then(|| {
                // SAFETY: as above.
                let job = unsafe { &*p };
                job.active.fetch_add(1, SeqCst);
                job
            });
            ENTERING.fetch_sub(1, SeqCst);
            if let Some(job) = entered {
                served = job.generation;
                IDLE.fetch_sub(1, SeqCst);
                job.help();
                // Idle again before leaving the job: once the caller sees the job
                // empty, its next call counts this helper as waiting (else it would
                // start another, and helpers would pile up past the threads asked).
                IDLE.fetch_add(1, SeqCst);
                // The last access to the job: the caller may free it from here on.
                job.active.fetch_sub(1, SeqCst);
                since = Instant::now();
                continue;
            }
        }
        polls = polls.wrapping_add(1);
        // Check the clock every 64 polls, and let other threads run now and then.
        if polls.is_multiple_of(64) {
            if since.elapsed() > LINGER {
                IDLE.fetch_sub(1, SeqCst);
                return;
            }
            std::thread::yield_now();
        }
        std::hint::spin_loop();
    }
}

fn spawn_helper() {
    #[cfg(feature = "rayon")]
    rayon::spawn(helper);
    #[cfg(not(feature = "rayon"))]
    {
        // Without a thread, the call runs on fewer threads: never an error.
        let _ = std::thread::Builder::new().name("qgemm-helper".into()).spawn(helper);
    }
}

/// Runs `task(i, scratch)` for every `i` in `0..tasks` on up to `threads` threads, the
/// calling thread included, each with its own scratch from `workspace`. Workers take
/// the next task from a shared counter, so a thread that starts late takes fewer, and
/// the caller alone takes them all if no helper comes.
///
/// Returns when every task has run; a panic in a task reaches the caller.
pub(crate) fn run_tasks(
    tasks: usize,
    threads: usize,
    workspace: &mut Workspace,
    task: &(dyn Fn(usize, &mut Scratch) + Sync),
) {
    let workers = threads.min(tasks).max(1);
    let scratch = workspace.threads(workers);
    if workers == 1 {
        (0..tasks).for_each(|i| task(i, &mut scratch[0]));
        return;
    }
    let job = Job {
        generation: GENERATION.fetch_add(1, SeqCst),
        tasks,
        next: AtomicUsize::new(0),
        next_slot: AtomicUsize::new(1),
        slots: workers,
        scratch: scratch.as_mut_ptr(),
        active: AtomicUsize::new(0),
        task,
        panic: Mutex::new(None),
    };
    let erased = (&job as *const Job<'_>).cast::<Job<'static>>().cast_mut();
    if OFFERED.compare_exchange(ptr::null_mut(), erased, SeqCst, SeqCst).is_err() {
        // Another call holds the helpers: this one runs on threads of its own.
        return run_scoped(&job);
    }
    {
        let _withdraw = Withdraw(&job);
        LATEST.store(job.generation, SeqCst);
        for _ in IDLE.load(SeqCst)..workers - 1 {
            spawn_helper();
        }
        // SAFETY: slot 0 is the caller's; helpers take slots from 1.
        unsafe { job.work(0) };
    }
    let panic = job.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(payload) = panic {
        resume_unwind(payload);
    }
}

/// The job on scoped threads: rayon's pool with the `rayon` feature, else OS threads
/// started for this call.
fn run_scoped(job: &Job<'_>) {
    let helpers = job.slots - 1;
    #[cfg(feature = "rayon")]
    rayon::in_place_scope(|scope| {
        for _ in 0..helpers {
            scope.spawn(|_| job.help());
        }
        // SAFETY: slot 0 is the caller's; helpers take slots from 1.
        unsafe { job.work(0) };
    });
    #[cfg(not(feature = "rayon"))]
    std::thread::scope(|scope| {
        for _ in 0..helpers {
            scope.spawn(|| job.help());
        }
        // SAFETY: slot 0 is the caller's; helpers take slots from 1.
        unsafe { job.work(0) };
    });
    let panic = job.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(payload) = panic {
        resume_unwind(payload);
    }
}
