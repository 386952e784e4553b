//! `qgemm-bench --cutover`: where a tier's own kernel starts to beat its kernel for
//! small products (the registry's `small_kernel` and `small_rows`; on `amx-int8`,
//! `32x32c4-amx-int8` against `8x32c4-avx512vnni` on the same packed weights), the
//! evidence for the cut-over in M. Both kernels run through the loop nest
//! (`qgemm_kernels::driver`) on one thread, i32 output, full-range data; their results
//! must be equal, and the first M's equal to the reference.

use std::time::Duration;

use qgemm_kernels::driver::{GemmArgs, Scratch, gemm_in};
use qgemm_kernels::output::{OutData, OutView, OutputStage};
use qgemm_kernels::pack::{BLayout, PackedB};
use qgemm_kernels::registry::TIERS;
use qgemm_kernels::rows::Rows;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use qgemm::Isa;
use qgemm::reference::{self, OutputData};

/// The rows measured.
const ROWS: [usize; 14] = [1, 2, 4, 8, 12, 16, 20, 24, 32, 40, 48, 64, 96, 128];
/// (K, N) of the weights.
const WEIGHTS: [(usize, usize); 3] = [(1024, 1024), (4096, 4096), (768, 3072)];

/// Prints the table for each of `isas` whose tier has a kernel for small products;
/// `time` times one run (the study's median of runs). Returns false if any result
/// differs.
pub fn run(isas: &[Isa], min_time: Duration, time: impl Fn(Duration, &mut dyn FnMut()) -> f64) -> bool {
    let mut exact = true;
    let mut any = false;
    for &isa in isas {
        let Some(tier) = TIERS.iter().find(|t| t.name == isa.name()) else { continue };
        let (Some(main), Some(small)) = (tier.kernel(), tier.small_kernel()) else { continue };
        any = true;
        println!(
            "## {isa}: {} against {} (the registry's cut-over: M < {} on the second)",
            main.name(),
            small.name(),
            tier.small_rows
        );
        println!("| K × N | M | {} GOPS | {} GOPS | ratio |", main.name(), small.name());
        println!("|---|---:|---:|---:|---:|");
        let mut rng = StdRng::seed_from_u64(0xc07_0e57);
        let mut scratch = Scratch::new();
        for (k, n) in WEIGHTS {
            let b: Vec<i8> = (0..k * n).map(|_| rng.random::<u8>() as i8).collect();
            let packed = PackedB::try_new(main.tile(), &b, BLayout::KxN, k, n, &[0]).expect("weights");
            if !packed.fits(small.tile()) {
                println!("{} cannot read {}'s weights: no cut-over to measure", small.name(), main.name());
                exact = false;
                break;
            }
            let mut first_win = None;
            for (i, &m) in ROWS.iter().enumerate() {
                let a: Vec<u8> = (0..m * k).map(|_| rng.random::<u8>()).collect();
                let mut outs = [vec![0i32; m * n], vec![0i32; m * n]];
                let mut gops = [0.0; 2];
                for (j, kernel) in [main, small].into_iter().enumerate() {
                    let out = &mut outs[j];
                    let mut once = || {
                        let args = GemmArgs {
                            m,
                            a: Rows::Matrix { data: &a, stride: k },
                            a_zp: 3,
                            b: &packed,
                            stage: OutputStage { bias: None, requant: None },
                            columns: 0..n,
                            out: OutData::I32(OutView::new(out, m, n, n)),
                        };
                        gemm_in(kernel, args, &mut scratch);
                    };
                    let secs = time(min_time, &mut once);
                    gops[j] = 2.0 * (m * n * k) as f64 / secs / 1e9;
                }
                if outs[0] != outs[1] {
                    println!("| {k} × {n} | {m} | WRONG: the two kernels differ | | |");
                    exact = false;
                }
                if i == 0 {
                    let zp = reference::Channelwise::PerTensor(0);
                    let problem = reference::GemmProblem {
                        m,
                        n,
                        k,
                        a: &a,
                        a_row_stride: k,
                        a_zero_point: 3,
                        b: &b,
                        b_layout: reference::WeightLayout::KxN,
                        b_zero_point: &zp,
                    };
                    let stage = reference::OutputStage::i32();
                    let want = reference::gemm(&problem, &stage, reference::OutputType::I32);
                    if want != OutputData::I32(outs[0].clone()) {
                        println!("| {k} × {n} | {m} | WRONG: differs from the reference | | |");
                        exact = false;
                    }
                }
                // The smallest M from which the tier's own kernel wins at every larger M.
                first_win = if gops[0] > gops[1] { first_win.or(Some(m)) } else { None };
                println!("| {k} × {n} | {m} | {:.1} | {:.1} | {:.2} |", gops[0], gops[1], gops[0] / gops[1]);
            }
            match first_win {
                Some(m) => println!("\n{k} × {n}: {} is faster at every M from {m} on\n", main.name()),
                None => println!("\n{k} × {n}: {} is not faster at M = 128\n", main.name()),
            }
        }
    }
    if !any {
        println!("no ISA here has a kernel for small products (the amx-int8 tier has one)");
    }
    exact
}
