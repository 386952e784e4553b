//! The task API on the caller's own threads, as an engine with its own pool drives
//! qgemm: `GemmTasks` checks the call and cuts it into tasks; each task runs once, on
//! any thread, in any order, with that thread's `Workspace`. Here the "pool" is three
//! scoped OS threads taking tasks from a shared counter. The result is compared with
//! the same GEMM on one thread: byte-identical for any partition.
//!
//! `cargo run --release -p qgemm --example tasks`

use std::sync::atomic::{AtomicUsize, Ordering};

use qgemm::{
    Activations, Channelwise, GemmTasks, OutputMatrix, OutputStage, PackedWeights, Partition, Requantization,
    Requantize, Weights, Workspace,
};

fn main() -> qgemm::Result<()> {
    let (m, k, n) = (200, 512, 300);
    let a: Vec<u8> = (0..m * k).map(|i| (i * 7 % 256) as u8).collect();
    let b: Vec<i8> = (0..k * n).map(|i| (i * 13 % 256) as u8 as i8).collect();
    let zero_point = Channelwise::PerTensor(3);
    let packed = PackedWeights::new(Weights::kxn(&b, k, n).with_zero_point(zero_point.clone()))?;
    let stage = OutputStage::requantized(Requantize::from_i32(
        Requantization::Float { scale: Channelwise::PerTensor(1.0 / 40_000.0) },
        128,
        0,
        255,
    ));
    let acts = Activations::new(&a, m, k, 100);

    let mut single = vec![0u8; m * n];
    qgemm::gemm(&acts, &packed, &stage, OutputMatrix::u8(&mut single, m, n))?;

    // The engine's pool: three threads, each with its own workspace.
    let threads = 3;
    let mut c = vec![0u8; m * n];
    let partition = Partition::auto(threads);
    let tasks = GemmTasks::new(&acts, &packed, &stage, OutputMatrix::u8(&mut c, m, n), &partition)?;
    let next = AtomicUsize::new(0);
    let ran: Vec<usize> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> qgemm::Result<usize> {
                    let mut workspace = Workspace::new();
                    let mut count = 0;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= tasks.len() {
                            return Ok(count);
                        }
                        tasks.run(i, &mut workspace)?;
                        count += 1;
                    }
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("a worker panicked")).collect::<qgemm::Result<_>>()
    })?;
    let count = tasks.len();
    drop(tasks);
    assert!(c == single, "the tasks' result differs from one thread's");
    println!(
        "{m}x{k}x{n} in {count} tasks on {threads} threads of the caller's own ({ran:?} tasks each): \
         byte-identical to one thread"
    );
    Ok(())
}
