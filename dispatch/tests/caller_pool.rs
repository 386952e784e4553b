//! A threaded call made on a rayon pool takes its helpers from that pool: an engine
//! that runs its operators in `pool.install(…)` keeps qgemm's work on its own threads
//! (rayon's `spawn` goes to the pool of the thread that calls it; only a call from
//! outside every pool uses the global one). Checked by where the CPU time goes: on a
//! 2-thread pool whose first thread makes the calls, the second must do a large share
//! of the work, which it could not if the helpers went to the global pool. Every
//! result is checked. Needs the `rayon` feature, and Linux for per-thread CPU time
//! (`/proc/self/task/*/schedstat`).

#![cfg(all(feature = "rayon", target_os = "linux"))]

use qgemm::{Activations, Channelwise, OutputMatrix, OutputStage, PackedWeights, WeightLayout, Weights, Workspace};

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

#[test]
fn calls_on_a_pool_run_on_that_pool() {
    let (m, k, n) = (256, 1024, 1024);
    let a: Vec<u8> = (0..m * k).map(|i| (i * 7 % 256) as u8).collect();
    let b: Vec<i8> = (0..k * n).map(|i| (i * 13 % 256) as u8 as i8).collect();
    let zero_point = Channelwise::PerTensor(-3);
    let weights = Weights { data: &b, layout: WeightLayout::KxN, k, n, zero_point: &zero_point };
    let packed = PackedWeights::new(weights).expect("weights");
    let run = |threads: usize, workspace: &mut Workspace| {
        let mut c = vec![0i32; m * n];
        let options = qgemm::Options::new().with_threads(threads);
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
    pool.install(|| {
        let mut workspace = Workspace::new();
        for _ in 0..20 {
            assert!(run(2, &mut workspace) == expected, "a wrong result");
        }
    });
    let after = cpu_of_threads("engine-pool-");
    let used: Vec<u64> = after.iter().zip(&before).map(|((_, t1), (_, t0))| t1 - t0).collect();
    println!("CPU time of the pool's two threads over 20 calls at 2 threads: {used:?} ns");
    if used.iter().all(|&t| t == 0) {
        println!("no per-thread CPU time here (a kernel without schedstat): nothing to compare");
        return;
    }
    let (most, least) = (used.iter().max().unwrap(), used.iter().min().unwrap());
    // The calling thread and its helper share the work; a helper on the global pool
    // would leave the pool's other thread idle.
    assert!(*least * 4 > *most, "one of the pool's threads did little of the work: {used:?} ns");
}
