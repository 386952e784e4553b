//! The loom model of the helper threads' hand-off: `src/parallel/handoff.rs`, the very
//! file the library runs, compiled here on loom's atomics, so that loom tries every
//! interleaving of a caller and its helpers (bounded preemptions) and checks:
//!
//! - every task runs exactly once, and before the caller returns (the tasks write
//!   loom cells, which the caller reads after; loom reports any access not ordered
//!   by the protocol);
//! - no helper touches the job once the caller may free it: each helper access reads
//!   the job's probe, which the caller writes ("frees") right after its exit
//!   protocol returns; a read not ordered before that write is a loom failure;
//! - no wait hangs (loom fails an execution that cannot make progress).
//!
//! Three models: the exchange with one and with two helpers (one of which may come
//! after the caller has left), and a gate with two helpers that may come before,
//! during or after the caller's work (also after it has returned: such a helper must
//! leave without touching the job).
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p qgemm --release --test loom_handoff -- --nocapture
//! ```
//!
//! (`.ci/run` runs it so; `LOOM_MAX_PREEMPTIONS` overrides the bound of 4.)

#![cfg(loom)]

use loom::sync::Arc;
use loom::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize};
use loom::thread;

/// What `handoff.rs` is built on, here loom's.
mod sync {
    pub(crate) use loom::sync::Mutex;
    pub(crate) use loom::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering, fence};

    /// One turn of a wait loop: let the other threads run.
    pub(crate) fn spin() {
        loom::thread::yield_now();
    }

    /// A job's lifetime as loom sees it: helpers read it on each access, the caller
    /// writes it when the job may go.
    pub(crate) struct Probe(loom::cell::UnsafeCell<()>);

    impl Probe {
        pub(crate) fn new() -> Probe {
            Probe(loom::cell::UnsafeCell::new(()))
        }

        pub(crate) fn touch(&self) {
            self.0.with(|_| ());
        }

        pub(crate) fn free(&self) {
            self.0.with_mut(|_| ());
        }
    }
}

#[path = "../src/parallel/handoff.rs"]
#[allow(dead_code)]
mod handoff;

use handoff::{Closing, Exchange, Gate, Job};

/// Tasks per job.
const TASKS: usize = 2;

/// Per-task cells: each task adds 1 to its own, unsynchronized.
struct Cells(Vec<loom::cell::UnsafeCell<usize>>);

// SAFETY: shared on purpose, unsynchronized: loom checks that the protocol orders
// every access (that is the test).
unsafe impl Sync for Cells {}

fn task_cells() -> Arc<Cells> {
    Arc::new(Cells((0..TASKS).map(|_| loom::cell::UnsafeCell::new(0)).collect()))
}

/// Task `i`: one unsynchronized increment of its cell.
fn run_task(cells: &Cells, i: usize) {
    // SAFETY: loom's cell: a race is a model failure, not undefined behaviour.
    cells.0[i].with_mut(|p| unsafe { *p += 1 });
}

/// After the caller returned: every task ran once (reading the cells is a loom
/// failure unless every task's write happened before).
fn check_once(cells: &Cells) {
    for (i, cell) in cells.0.iter().enumerate() {
        // SAFETY: as in `run_task`.
        assert_eq!(cell.with(|p| unsafe { *p }), 1, "task {i}");
    }
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(4);
    }
    let executions = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = executions.clone();
    builder.check(move || {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        f();
    });
    println!("{} executions", executions.load(std::sync::atomic::Ordering::Relaxed));
}

fn exchange() -> Exchange<u32> {
    Exchange {
        offered: AtomicPtr::new(std::ptr::null_mut()),
        entering: AtomicUsize::new(0),
        idle: AtomicUsize::new(0),
        pending: AtomicUsize::new(0),
        generation: AtomicU64::new(1),
        latest: AtomicU64::new(0),
    }
}

/// A helper of the exchange: arrives, looks for a job up to `polls` times, leaves.
fn exchange_helper(exchange: Arc<Exchange<u32>>, polls: usize) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        exchange.arrive();
        let mut served = 0;
        for _ in 0..polls {
            if exchange.poll(&mut served) {
                break;
            }
            thread::yield_now();
        }
        exchange.depart();
    })
}

/// One call on the exchange, as `helpers::run_reserved` makes it, for `workers`
/// workers; `start` starts the helpers it is told to.
fn exchange_call(exchange: &Exchange<u32>, workers: usize, mut start: impl FnMut(usize)) {
    let cells = task_cells();
    let task_cells = cells.clone();
    let task = move |i: usize, scratch: &mut u32| {
        *scratch += 1;
        run_task(&task_cells, i);
    };
    let mut scratch = vec![0u32; workers];
    let job = Job::new(exchange.generation(), TASKS, &mut scratch, &task);
    let offered = exchange.offer(&job).expect("the exchange is free");
    start(exchange.to_start(workers));
    job.work_as_caller();
    drop(offered);
    // The job may go now: no helper may touch it after this.
    job.probe.free();
    check_once(&cells);
    assert!(job.take_panic().is_none());
}

#[test]
fn the_exchange_with_one_helper() {
    model(|| {
        let exchange = Arc::new(exchange());
        let mut helpers = Vec::new();
        exchange_call(&exchange, 2, |n| helpers.extend((0..n).map(|_| exchange_helper(exchange.clone(), 3))));
        helpers.into_iter().for_each(|t| t.join().unwrap());
    });
}

#[test]
fn the_exchange_with_two_helpers() {
    model(|| {
        let exchange = Arc::new(exchange());
        let mut helpers = Vec::new();
        exchange_call(&exchange, 3, |n| helpers.extend((0..n).map(|_| exchange_helper(exchange.clone(), 2))));
        helpers.into_iter().for_each(|t| t.join().unwrap());
    });
}

/// Two calls in turn and one helper, which may serve the first, the second, both or
/// neither: it must not enter a job it left, nor reach the first once it is gone
/// (and a helper it leaves for counts in the second call, which starts another only
/// if the first has left).
#[test]
fn the_exchange_over_two_calls() {
    model(|| {
        let exchange = Arc::new(exchange());
        let mut helpers = Vec::new();
        exchange_call(&exchange, 2, |n| helpers.extend((0..n).map(|_| exchange_helper(exchange.clone(), 4))));
        // The helper counts as pending or idle unless it has left: then one more.
        exchange_call(&exchange, 2, |n| {
            assert!(n <= 1, "{n} helpers started for one thread");
            helpers.extend((0..n).map(|_| exchange_helper(exchange.clone(), 1)));
        });
        helpers.into_iter().for_each(|t| t.join().unwrap());
    });
}

/// A gated call with two helpers, started after the gate exists and free to run at
/// any point, also after the caller has returned.
#[test]
fn a_gate_with_two_helpers_that_may_come_late() {
    model(|| {
        let cells = task_cells();
        let task_cells = cells.clone();
        let task = move |i: usize, scratch: &mut u32| {
            *scratch += 1;
            run_task(&task_cells, i);
        };
        let mut scratch = vec![0u32; 3];
        let job = Job::new(0, TASKS, &mut scratch, &task);
        let gate = Arc::new(Gate::new(&job));
        let helpers: Vec<_> = (0..2)
            .map(|_| {
                let gate = gate.clone();
                thread::spawn(move || gate.help())
            })
            .collect();
        {
            let _closing = Closing(&gate);
            job.work_as_caller();
        }
        job.probe.free();
        check_once(&cells);
        helpers.into_iter().for_each(|t| t.join().unwrap());
    });
}
