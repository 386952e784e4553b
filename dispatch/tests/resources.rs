//! Running out of memory or threads is an error or fewer threads, never an abort, a
//! panic or a poisoned process (issue 19, item 3).
//!
//! Each test re-runs itself in a child process (this test binary, `--exact`) whose
//! address space is limited with `ulimit -v`: the child reserves, untouched, all the
//! address space left but a margin (the "ballast", no real memory), makes its calls,
//! frees the ballast and makes them again. An abort or a panic in the child fails the
//! parent, which reads the child's report.
//!
//! - Scratch that cannot be allocated: `Err(OutOfMemory)`, the output untouched, at 1
//!   and 2 threads, through `gemm_in` and the task API; then the same calls succeed.
//! - Helper threads that cannot start (no room for their stacks; rayon's global pool
//!   cannot start its workers): every call still returns the right bytes, from two
//!   callers at once (so that calls meet on the exchange and at gates); once memory
//!   is back, helpers run again (seen in `/proc/self/task`), although rayon's global
//!   pool never will in that process.
//! - The same with a thread limit (`ulimit -u`), where one applies (not as root).

#![cfg(target_os = "linux")]

use std::process::Command;
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use qgemm::{
    Activations, Channelwise, ErrorKind, GemmTasks, OutputMatrix, OutputStage, PackedWeights, Partition, Weights,
    Workspace,
};

/// Set in the child: the test's limited part runs.
const CHILD: &str = "QGEMM_RESOURCES_CHILD";

/// Runs test `name` of this binary in a child under `limits` (bash `ulimit`
/// arguments), and checks that it exited cleanly, printed `done` and no panic.
/// The child gets 5 minutes (a hang is a failure, not a stuck CI), and threads'
/// stacks of 16 MiB (`RUST_MIN_STACK`, which rayon's workers follow too), so that a
/// margin of a few MiB of address space holds the calls' scratch and small
/// allocations but no thread.
fn in_child(name: &str, limits: &str) {
    if std::env::var_os("QGEMM_TEST_RUNNER").is_some_and(|r| !r.is_empty()) {
        // Under an emulator (the AArch64 runs under qemu-user in CI) the limits would
        // bind the emulator's own memory and threads; these tests run natively.
        println!("under an emulator: {name} runs natively only");
        return;
    }
    let exe = std::env::current_exe().expect("the test binary");
    let script = format!("ulimit {limits} && exec \"$0\" --exact {name} --nocapture --test-threads=1");
    let out = Command::new("timeout")
        .args(["300", "bash", "-c", &script])
        .arg(exe)
        .env(CHILD, "1")
        .env("RUST_MIN_STACK", (64 << 20).to_string())
        .output()
        .expect("timeout and bash");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("child ({limits}):\n{stdout}{stderr}");
    assert!(out.status.success(), "the child under `ulimit {limits}` failed: {:?}", out.status);
    assert!(stdout.contains(&format!("{name}: done")), "the child did not finish its calls");
    // Not even a panic caught inside qgemm (rayon's, where its pool failed to start).
    assert!(!stderr.contains("panicked"), "a panic in the child");
}

fn is_child() -> bool {
    std::env::var_os(CHILD).is_some()
}

/// Address space reserved (never touched) until only about `margin` bytes are left
/// under the child's `ulimit -v`.
struct Ballast {
    _pieces: Vec<Vec<u8>>,
}

impl Ballast {
    fn fill(margin: usize) -> Ballast {
        let mut pieces = Vec::with_capacity(4096);
        let mut size = 1usize << 36;
        while size >= 4096 {
            let mut piece = Vec::new();
            if pieces.len() < pieces.capacity() && piece.try_reserve_exact(size).is_ok() {
                pieces.push(piece);
            } else {
                size /= 2;
            }
        }
        // Give back the smallest pieces, up to the margin.
        let mut freed = 0;
        while freed < margin {
            let Some(piece) = pieces.pop() else { break };
            freed += piece.capacity();
        }
        let held: usize = pieces.iter().map(Vec::capacity).sum();
        println!("ballast: {} MiB in {} pieces, {freed} bytes given back", held >> 20, pieces.len());
        Ballast { _pieces: pieces }
    }
}

/// A GEMM and its packed weights, with the answer from a call under no limit.
struct Problem {
    m: usize,
    n: usize,
    k: usize,
    a: Vec<u8>,
    packed: PackedWeights,
    expected: Vec<i32>,
}

impl Problem {
    fn new(m: usize, n: usize, k: usize) -> Problem {
        let a: Vec<u8> = (0..m * k).map(|i| (i * 7 % 256) as u8).collect();
        let b: Vec<i8> = (0..k * n).map(|i| (i * 13 % 256) as u8 as i8).collect();
        let zero_point = Channelwise::PerTensor(3);
        let weights = Weights::kxn(&b, k, n).with_zero_point(zero_point.clone());
        let packed = PackedWeights::new(weights).expect("weights");
        let mut p = Problem { m, n, k, a, packed, expected: Vec::new() };
        p.expected = p.run(1, &mut Workspace::new()).expect("a call under no limit");
        p
    }

    fn run(&self, threads: usize, workspace: &mut Workspace) -> qgemm::Result<Vec<i32>> {
        let mut c = vec![-7i32; self.m * self.n];
        self.run_into(&mut c, threads, workspace).map(|()| c)
    }

    /// Runs into `c`, which must be untouched (all −7) if the call fails.
    fn run_into(&self, c: &mut [i32], threads: usize, workspace: &mut Workspace) -> qgemm::Result<()> {
        c.fill(-7);
        let a = Activations::new(&self.a, self.m, self.k, 5);
        let options = qgemm::Options::new().with_threads(threads);
        let stage = OutputStage::default();
        let result =
            qgemm::gemm_in(&a, &self.packed, &stage, OutputMatrix::i32(c, self.m, self.n), &options, workspace);
        if let Err(e) = &result {
            assert!(c.iter().all(|&x| x == -7), "output written by a call that failed: {e}");
        }
        result
    }

    /// Task 0 of a 2-task grid through the task API, into `c`.
    fn run_task(&self, c: &mut [i32], workspace: &mut Workspace) -> qgemm::Result<()> {
        c.fill(-7);
        let a = Activations::new(&self.a, self.m, self.k, 5);
        let partition = Partition::grid([0, self.m / 2, self.m], [0, self.n]);
        let stage = OutputStage::default();
        let tasks = GemmTasks::new(&a, &self.packed, &stage, OutputMatrix::i32(c, self.m, self.n), &partition)?;
        let result = tasks.run(0, workspace);
        drop(tasks);
        if result.is_err() {
            assert!(c.iter().all(|&x| x == -7), "output written by a task that failed");
        }
        result
    }
}

#[test]
fn scratch_that_cannot_be_allocated_is_an_error_and_the_output_stays_untouched() {
    const NAME: &str = "scratch_that_cannot_be_allocated_is_an_error_and_the_output_stays_untouched";
    if !is_child() {
        return in_child(NAME, "-v 4194304");
    }
    // Scratch of more than 100 KiB per thread on every tier (the accumulators of one
    // block alone), against a 32 KiB margin.
    let problem = Problem::new(256, 1024, 1024);
    let mut c = vec![0i32; problem.m * problem.n];
    let ballast = Ballast::fill(32 << 10);
    for threads in [1, 2] {
        let err = problem.run_into(&mut c, threads, &mut Workspace::new()).expect_err("no room for the scratch");
        assert_eq!(err.kind(), ErrorKind::OutOfMemory, "{err}");
        println!("{threads} threads: {err}");
    }
    let err = problem.run_task(&mut c, &mut Workspace::new()).expect_err("no room for the task's scratch");
    assert_eq!(err.kind(), ErrorKind::OutOfMemory, "{err}");
    drop(ballast);
    for threads in [1, 2] {
        problem.run_into(&mut c, threads, &mut Workspace::new()).expect("memory is back");
        assert!(c == problem.expected, "a wrong result at {threads} threads");
    }
    problem.run_task(&mut c, &mut Workspace::new()).expect("memory is back");
    println!("{NAME}: done");
}

/// Threaded calls, `calls` of them, every result checked.
fn calls(problem: &Problem, calls: usize) {
    let mut workspace = Workspace::new();
    for _ in 0..calls {
        let c = problem.run(2, &mut workspace).expect("the scratch fits");
        assert!(c == problem.expected, "a wrong result");
    }
}

/// Whether a helper thread of qgemm's own shows up in this process within `within`,
/// while another thread makes calls.
fn helpers_show_up(problem: &Problem, within: Duration) -> bool {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Relaxed) {
                calls(problem, 1);
            }
        });
        let start = Instant::now();
        let mut seen = false;
        while !seen && start.elapsed() < within {
            let threads = std::fs::read_dir("/proc/self/task").expect("/proc/self/task");
            seen = threads.flatten().any(|t| {
                std::fs::read_to_string(t.path().join("comm")).is_ok_and(|comm| comm.starts_with("qgemm-helper"))
            });
        }
        stop.store(true, Relaxed);
        seen
    })
}

#[test]
fn helpers_that_cannot_start_cost_threads_not_the_call() {
    const NAME: &str = "helpers_that_cannot_start_cost_threads_not_the_call";
    if !is_child() {
        return in_child(NAME, "-v 4194304");
    }
    let problem = Problem::new(64, 256, 256);
    // Two callers, started before the limit bites, so that calls meet on the exchange
    // and at gates. The margin (16 MiB, 16–32 MiB given back) leaves room for their
    // scratch (about 100 KiB each), small allocations and the allocator's own growth
    // (4 MiB was too tight: depending on the address-space layout an allocation of a
    // few bytes could fail and abort), not for a thread's 64 MiB stack (RUST_MIN_STACK
    // in the child): rayon's global pool cannot start its workers, nor can an OS
    // thread start.
    let ready = Barrier::new(3);
    std::thread::scope(|s| {
        let callers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    ready.wait();
                    calls(&problem, 200);
                })
            })
            .collect();
        let ballast = Ballast::fill(16 << 20);
        ready.wait();
        callers.into_iter().for_each(|c| c.join().expect("a caller panicked"));
        drop(ballast);
    });
    // Threads can start again: helpers come back (OS threads, since rayon's global
    // pool never starts in a process where it failed once).
    assert!(helpers_show_up(&problem, Duration::from_secs(10)), "no helper thread once threads can start again");
    println!("{NAME}: done");
}

#[test]
fn helpers_beyond_the_thread_limit_cost_threads_not_the_call() {
    const NAME: &str = "helpers_beyond_the_thread_limit_cost_threads_not_the_call";
    if !is_child() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        if status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0")) {
            // The limit does not bind root; the `ulimit -v` test covers the same paths.
            println!("running as root: RLIMIT_NPROC does not apply, nothing to test here");
            return;
        }
        return in_child(NAME, "-u 1");
    }
    // No thread can start in the child (libtest runs this test on its main thread).
    calls(&Problem::new(64, 256, 256), 200);
    println!("{NAME}: done");
}
