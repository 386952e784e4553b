//! A bounded concurrency stress test: several callers at once, each making threaded
//! calls with its own thread count (1 to 4) on problems of its own, GEMMs of several
//! shapes and on every available ISA, some through a shared pool of precomputed cases.
//! Callers race for the helpers (one holds the exchange, the others pass through
//! gates) while their calls overlap at random. Every result is checked against the
//! reference; the test ends after a fixed number of calls.

mod common;

use std::sync::Arc;

use common::{GemmCase, Rng};
use qgemm::reference::OutputData;

#[test]
fn concurrent_callers_with_mixed_thread_counts_get_exact_results() {
    let mut rng = Rng::new(0x57e5_5000_0001);
    // Shapes with tails for every tile, large enough to split over 4 threads.
    let shapes = [(37, 29, 70), (64, 96, 256), (9, 200, 33), (120, 48, 130), (1, 300, 500)];
    let cases: Arc<Vec<(GemmCase, OutputData)>> = Arc::new(
        shapes
            .iter()
            .map(|&(m, n, k)| {
                let case = GemmCase::random(&mut rng, m, n, k);
                let expected = case.expected();
                (case, expected)
            })
            .collect(),
    );
    let callers = 6;
    let calls = if cfg!(miri) { 2 } else { 40 };
    std::thread::scope(|s| {
        for caller in 0..callers {
            let cases = Arc::clone(&cases);
            s.spawn(move || {
                let mut rng = Rng::new(0x57e5_5000_0100 + caller as u64);
                for call in 0..calls {
                    let (case, expected) = &cases[rng.below(cases.len())];
                    let isa = rng.pick(qgemm::available_isas());
                    let threads = 1 + rng.below(4);
                    let (got, gaps_ok) = case.run(isa, threads);
                    assert!(gaps_ok, "caller {caller}, call {call}: {isa} wrote between rows");
                    assert!(
                        got == *expected,
                        "caller {caller}, call {call}: {isa} on {threads} threads, {}×{}×{}: {}",
                        case.m,
                        case.n,
                        case.k,
                        common::first_mismatch(&got, expected, case.n)
                    );
                }
            });
        }
    });
}
