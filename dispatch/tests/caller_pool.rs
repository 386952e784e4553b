//! A threaded call made on a rayon pool takes its helpers from that pool: an engine
//! that runs its operators in `pool.install(…)` keeps qgemm's work on its own threads
//! (rayon's `spawn` goes to the pool of the thread that calls it; only a call from
//! outside every pool uses the global one). Checked by the process's threads: calls
//! made on a 2-thread pool, with helpers told to linger for a second after each call,
//! leave no thread behind that was not there before (helpers on the global pool would
//! have started it, and OS helper threads would still be lingering). Every result is
//! checked; the CPU time of the pool's two threads is printed. Needs the `rayon`
//! feature, and Linux (`/proc/self/task`).

#![cfg(all(feature = "rayon", target_os = "linux"))]

use std::time::Duration;

use qgemm::{Activations, Channelwise, OutputMatrix, OutputStage, PackedWeights, Weights, Workspace};

/// CPU time in nanoseconds of each thread whose name starts with `prefix`.
fn cpu_of_threads(prefix: &str) -> Vec<(String, u64)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task").flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default().trim().to_string();
        if name.starts_with(prefix) {
            let stat = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
            let ns = stat.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0);
            found.push((name, ns));
        }
    }
    found.sort();
    found
}

/// The names of the process's threads, sorted.
fn thread_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .flatten()
        .map(|t| std::fs::read_to_string(t.path().join("comm")).unwrap_or_default().trim().to_string())
        .collect();
    names.sort();
    names
}

#[test]
fn calls_on_a_pool_run_on_that_pool() {
    let (m, k, n) = (256, 1024, 1024);
    let a: Vec<u8> = (0..m * k).map(|i| (i * 7 % 256) as u8).collect();
    let b: Vec<i8> = (0..k * n).map(|i| (i * 13 % 256) as u8 as i8).collect();
    let zero_point = Channelwise::PerTensor(-3);
    let weights = Weights::kxn(&b, k, n).with_zero_point(zero_point.clone());
    let packed = PackedWeights::new(weights).expect("weights");
    let run = |threads: usize, workspace: &mut Workspace| {
        let mut c = vec![0i32; m * n];
        let options = qgemm::Options::new().with_threads(threads).with_spin_time(Duration::from_secs(1));
        let out = OutputMatrix::i32(&mut c, m, n);
        let acts = Activations::new(&a, m, k, 9);
        qgemm::gemm_in(&acts, &packed, &OutputStage::default(), out, &options, workspace).expect("a valid call");
        c
    };
    let expected = run(1, &mut Workspace::new());

    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .thread_name(|i| format!("engine-pool-{i}"))
        .build()
        .expect("a pool");
    // Every thread of the pool has started (rayon starts them in the background).
    pool.broadcast(|_| ());
    let before = cpu_of_threads("engine-pool-");
    assert_eq!(before.len(), 2, "the pool's threads: {before:?}");
    let threads_before = thread_names();
    pool.install(|| {
        let mut workspace = Workspace::new();
        for _ in 0..20 {
            assert!(run(2, &mut workspace) == expected, "a wrong result");
        }
    });
    // Helpers linger for a second after each call: any that came from elsewhere are
    // still there.
    let threads_after = thread_names();
    let after = cpu_of_threads("engine-pool-");
    let used: Vec<u64> = after.iter().zip(&before).map(|((_, t1), (_, t0))| t1 - t0).collect();
    println!("CPU time of the pool's two threads over 20 calls at 2 threads: {used:?} ns");
    assert_eq!(threads_after, threads_before, "threads appeared: the helpers did not come from the caller's pool");
}
