//! A threaded call never waits for work it did not ask for (issue 19, item 2): with
//! every worker of rayon's global pool blocked by other work, threaded calls return
//! in about their single-thread time, their caller doing every task itself:
//!
//! - from two threads outside the pool at once, so that one call holds the helpers'
//!   exchange while the other lets helpers in through a gate;
//! - nested, from a job of the pool (the one worker not blocked on the lock);
//!
//! all while the pool stays blocked: the pool is released only once every call has
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

use qgemm::{Activations, Channelwise, OutputMatrix, OutputStage, PackedWeights, WeightLayout, Weights, Workspace};

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
        let weights = Weights { data: &b, layout: WeightLayout::KxN, k, n, zero_point: &zero_point };
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

#[test]
fn calls_return_while_the_global_pool_is_blocked() {
    let problem = Arc::new(Problem::new(96, 256, 512));
    let expected: Arc<Vec<i32>> = Arc::new(problem.run(1, &mut Workspace::new()));
    let single = median(problem.calls(20, 1, &expected));

    // Block every worker of the global pool but one on a lock this thread holds; the
    // last one runs the nested caller.
    let workers = rayon::current_num_threads();
    let lock = Arc::new(Mutex::new(()));
    let held = lock.lock().unwrap();
    let started = Arc::new(Barrier::new(workers + 1));
    let (done, finished) = mpsc::channel::<(&'static str, Vec<Duration>)>();
    for _ in 1..workers {
        let (lock, started) = (Arc::clone(&lock), Arc::clone(&started));
        rayon::spawn(move || {
            started.wait();
            drop(lock.lock());
        });
    }
    {
        let (started, problem, expected, done) =
            (Arc::clone(&started), Arc::clone(&problem), Arc::clone(&expected), done.clone());
        rayon::spawn(move || {
            started.wait();
            let _ = done.send(("nested in a pool job", problem.calls(50, 2, &expected)));
        });
    }
    // Every worker is taken from here on (the barrier waits for all of them).
    started.wait();
    let blocked_at = Instant::now();
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let (problem, expected, done) = (Arc::clone(&problem), Arc::clone(&expected), done.clone());
            std::thread::spawn(move || {
                let _ = done.send(("from outside the pool", problem.calls(100, 3, &expected)));
            })
        })
        .collect();
    let mut results = Vec::new();
    while results.len() < 3 {
        let Some(left) = DEADLINE.checked_sub(blocked_at.elapsed()) else { break };
        match finished.recv_timeout(left) {
            Ok(r) => results.push(r),
            Err(_) => break,
        }
    }
    let returned_blocked = results.len();
    let blocked_for = blocked_at.elapsed();
    drop(held);
    callers.into_iter().for_each(|c| c.join().expect("a caller panicked"));
    while results.len() < 3 {
        results.push(finished.recv().expect("the nested caller reports"));
    }
    println!("single thread: median {single:?} per call; the pool blocked for {blocked_for:?}");
    for (caller, times) in &results {
        let most = *times.iter().max().unwrap();
        println!("{caller}: median {:?}, slowest {most:?} over {} calls", median(times.clone()), times.len());
    }
    assert_eq!(
        returned_blocked, 3,
        "calls waited for the blocked pool: only {returned_blocked} of 3 callers returned within {DEADLINE:?}"
    );
}
