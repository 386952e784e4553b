//! A threaded call never waits for work it did not ask for (issue 19, item 2): with
//! every worker of rayon's global pool blocked by other work, threaded calls return
//! in about their single-thread time, their caller doing every task itself:
//!
//! - from two threads outside the pool at once, every worker blocked, so that one
//!   call holds the helpers' exchange while the other lets helpers in through a gate;
//! - nested, from a job of the pool (the one worker not blocked on the lock), while a
//!   thread outside makes calls too;
//!
//! all while the pool stays blocked (its workers wait on channels): the pool is released only once every call has
//! returned, or after a deadline, which then fails the test (before the fix, a call
//! at a gate waited for its helper jobs to run: as long as the pool stayed blocked,
//! and forever if it was released only after the calls).
//!
//! Without the `rayon` feature qgemm's helpers are OS threads, and the same calls
//! check the gate on those.
//!
//! In a file of its own, so that no other test's calls share the process's pool.

use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use qgemm::{Activations, Channelwise, OutputMatrix, OutputStage, PackedWeights, Weights, Workspace};

/// How long the pool stays blocked at most: far beyond the calls' few milliseconds.
const DEADLINE: Duration = Duration::from_secs(10);

struct Problem {
    m: usize,
    n: usize,
    k: usize,
    a: Vec<u8>,
    packed: PackedWeights,
}

impl Problem {
    fn new(m: usize, n: usize, k: usize) -> Problem {
        let a = (0..m * k).map(|i| (i * 7 % 256) as u8).collect();
        let b: Vec<i8> = (0..k * n).map(|i| (i * 13 % 256) as u8 as i8).collect();
        let zero_point = Channelwise::PerTensor(-3);
        let weights = Weights::kxn(&b, k, n).with_zero_point(zero_point.clone());
        Problem { m, n, k, a, packed: PackedWeights::new(weights).expect("weights") }
    }

    fn run(&self, threads: usize, workspace: &mut Workspace) -> Vec<i32> {
        let mut c = vec![0i32; self.m * self.n];
        let a = Activations::new(&self.a, self.m, self.k, 9);
        let options = qgemm::Options::new().with_threads(threads);
        let out = OutputMatrix::i32(&mut c, self.m, self.n);
        qgemm::gemm_in(&a, &self.packed, &OutputStage::default(), out, &options, workspace).expect("a valid call");
        c
    }

    /// `calls` calls at `threads` threads, each checked against `expected`; their
    /// latencies.
    fn calls(&self, calls: usize, threads: usize, expected: &[i32]) -> Vec<Duration> {
        let mut workspace = Workspace::new();
        (0..calls)
            .map(|_| {
                let start = Instant::now();
                let c = self.run(threads, &mut workspace);
                let took = start.elapsed();
                assert!(c == expected, "a wrong result at {threads} threads");
                took
            })
            .collect()
    }
}

fn median(mut t: Vec<Duration>) -> Duration {
    t.sort_unstable();
    t[t.len() / 2]
}

/// Held by each test for its whole run: two tests blocking the pool at once could
/// each hold a worker at its barrier while waiting for the other's (seen under qemu).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Blocks `workers` workers of rayon's global pool, each on a channel, until the
/// returned senders are dropped; returns once they are all blocked. `then` runs,
/// after the barrier, as one more pool job (on a worker left free).
fn block_pool(workers: usize, then: Option<Box<dyn FnOnce() + Send>>) -> Vec<mpsc::Sender<()>> {
    let started = Arc::new(Barrier::new(workers + 1 + usize::from(then.is_some())));
    let senders = (0..workers)
        .map(|_| {
            let (release, blocked) = mpsc::channel::<()>();
            let started = Arc::clone(&started);
            rayon::spawn(move || {
                started.wait();
                let _ = blocked.recv();
            });
            release
        })
        .collect();
    if let Some(then) = then {
        let started = Arc::clone(&started);
        rayon::spawn(move || {
            started.wait();
            then();
        });
    }
    started.wait();
    senders
}

type Report = (&'static str, Vec<Duration>);

/// Waits for `callers` reports until `DEADLINE` after `since`; the reports and
/// how long it waited.
fn reports_by_deadline(finished: &mpsc::Receiver<Report>, callers: usize, since: Instant) -> Vec<Report> {
    let mut results = Vec::new();
    while results.len() < callers {
        let Some(left) = DEADLINE.checked_sub(since.elapsed()) else { break };
        match finished.recv_timeout(left) {
            Ok(r) => results.push(r),
            Err(_) => break,
        }
    }
    results
}

fn print_reports(single: Duration, blocked_for: Duration, results: &[Report]) {
    println!("single thread: median {single:?} per call; the pool blocked for {blocked_for:?}");
    for (caller, times) in results {
        let most = *times.iter().max().unwrap();
        println!("  {caller}: median {:?}, slowest {most:?} over {} calls", median(times.clone()), times.len());
    }
}

/// Two callers from outside the pool, at once (one on the exchange, the other at a
/// gate), with every worker of the pool blocked.
#[test]
fn calls_return_while_the_global_pool_is_blocked() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let problem = Arc::new(Problem::new(96, 256, 512));
    let expected: Arc<Vec<i32>> = Arc::new(problem.run(1, &mut Workspace::new()));
    let single = median(problem.calls(20, 1, &expected));
    let held = block_pool(rayon::current_num_threads(), None);
    let blocked_at = Instant::now();
    let (done, finished) = mpsc::channel::<Report>();
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let (problem, expected, done) = (Arc::clone(&problem), Arc::clone(&expected), done.clone());
            std::thread::spawn(move || {
                let _ = done.send(("from outside the pool", problem.calls(100, 3, &expected)));
            })
        })
        .collect();
    let mut results = reports_by_deadline(&finished, 2, blocked_at);
    let (returned_blocked, blocked_for) = (results.len(), blocked_at.elapsed());
    drop(held);
    callers.into_iter().for_each(|c| c.join().expect("a caller panicked"));
    results.extend(finished.try_iter());
    print_reports(single, blocked_for, &results);
    assert_eq!(
        returned_blocked, 2,
        "calls waited for the blocked pool: {returned_blocked} of 2 callers returned in {DEADLINE:?}"
    );
}

/// A call nested in a pool job, with every other worker blocked, while a caller from
/// outside makes calls too (so that either may find the exchange taken).
#[test]
fn nested_calls_return_while_the_rest_of_the_pool_is_blocked() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let problem = Arc::new(Problem::new(96, 256, 512));
    let expected: Arc<Vec<i32>> = Arc::new(problem.run(1, &mut Workspace::new()));
    let single = median(problem.calls(20, 1, &expected));
    let (done, finished) = mpsc::channel::<Report>();
    let nested = {
        let (problem, expected, done) = (Arc::clone(&problem), Arc::clone(&expected), done.clone());
        Box::new(move || {
            let _ = done.send(("nested in a pool job", problem.calls(50, 2, &expected)));
        })
    };
    let held = block_pool(rayon::current_num_threads() - 1, Some(nested));
    let blocked_at = Instant::now();
    let outside = {
        let (problem, expected, done) = (Arc::clone(&problem), Arc::clone(&expected), done.clone());
        std::thread::spawn(move || {
            let _ = done.send(("from outside the pool", problem.calls(100, 3, &expected)));
        })
    };
    let mut results = reports_by_deadline(&finished, 2, blocked_at);
    let (returned_blocked, blocked_for) = (results.len(), blocked_at.elapsed());
    drop(held);
    outside.join().expect("the caller panicked");
    while results.len() < 2 {
        results.push(finished.recv().expect("the nested caller reports"));
    }
    print_reports(single, blocked_for, &results);
    assert_eq!(
        returned_blocked, 2,
        "calls waited for the blocked pool: {returned_blocked} of 2 callers returned in {DEADLINE:?}"
    );
}
