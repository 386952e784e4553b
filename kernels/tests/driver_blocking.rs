//! The loop nest with tiny cache blocks, so that small problems cross every block
//! boundary (M, N and K each spanning several blocks, with tails), against the
//! reference. The public crate's harness covers the default blocking.

use std::ops::Range;

use qgemm_kernels::driver::{GemmArgs, gemm};
use qgemm_kernels::output::{OutData, OutView, OutputStage, Param, Requant, Scheme};
use qgemm_kernels::pack::{BLayout, PackedB};
use qgemm_kernels::rows::Rows;
mod common;

use common::{Problem, Rng, blocked_kernels, check_against_reference};
use qgemm_kernels::Kernel;
use qgemm_reference as reference;

/// Every kernel this CPU runs (the AVX2 one also without its fast path), each with its
/// own blocking and two tiny ones.
fn kernels() -> Vec<Kernel> {
    blocked_kernels()
}

#[test]
fn blocked_loop_nest_matches_reference() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for kernel in kernels() {
        let t = kernel.tile();
        // Under miri (which checks the unsafe code for UB), fewer and smaller problems.
        for _ in 0..if cfg!(miri) { 4 } else { 60 } {
            let m = 1 + rng.below(3 * t.mr + 3);
            let n = 1 + rng.below(3 * t.nr + 3);
            let k = rng.below(9 * t.k_step() + 3);
            let stride = k + rng.below(3);
            let a: Vec<u8> = (0..m * stride).map(|_| rng.next() as u8).collect();
            let b: Vec<i8> = (0..k * n).map(|_| rng.next() as i8).collect();
            let a_zp = rng.next() as u8;
            let layout = if rng.below(2) == 0 { BLayout::KxN } else { BLayout::NxK };
            let per_column = rng.below(2) == 0;
            let b_zp: Vec<i8> = (0..if per_column { n } else { 1 }).map(|_| rng.next() as i8).collect();
            let packed = PackedB::try_new(t, &b, layout, k, n, &b_zp).unwrap();
            let bias: Vec<i32> = (0..n).map(|_| rng.next() as i32 >> 8).collect();
            let problem = Problem { m, n, k, a: &a, stride, a_zp, b: &b, layout, b_zp: &b_zp, packed: &packed };
            check_against_reference(&kernel, &problem, &bias, -8);
        }
    }
}

#[test]
fn last_k_block_in_several_strips() {
    // A last K block long enough that its packed A spans several 16 KiB strips, so the
    // output stage runs strip by strip; with tails in M, N and K.
    let mut rng = Rng(0x51de_cafe_f00d_0001);
    for kernel in kernels() {
        let t = kernel.tile();
        let shapes: &[(usize, usize, usize)] =
            if cfg!(miri) { &[(13, 7, 300)] } else { &[(50, 40, 500), (61, 19, 1500), (7, 9, 3000)] };
        for &(m, n, k) in shapes {
            let a: Vec<u8> = (0..m * k).map(|_| rng.next() as u8).collect();
            let b: Vec<i8> = (0..k * n).map(|_| rng.next() as i8).collect();
            let packed = PackedB::try_new(t, &b, BLayout::KxN, k, n, &[-3]).unwrap();
            let bias: Vec<i32> = (0..n).map(|_| rng.next() as i32 >> 8).collect();
            let mut out = vec![0i32; m * n];
            gemm(
                &kernel,
                GemmArgs {
                    m,
                    a: Rows::Matrix { data: &a, stride: k },
                    a_zp: 77,
                    b: &packed,
                    stage: OutputStage { bias: Some(&bias), requant: None },
                    columns: 0..n,
                    out: OutData::I32(OutView::new(&mut out, m, n, n)),
                },
            );
            let zp = reference::Channelwise::PerTensor(-3);
            let problem = reference::GemmProblem {
                m,
                n,
                k,
                a: &a,
                a_row_stride: k,
                a_zero_point: 77,
                b: &b,
                b_layout: reference::WeightLayout::KxN,
                b_zero_point: &zp,
            };
            let stage = reference::OutputStage::new(Some(bias), None);
            let expected = reference::gemm(&problem, &stage, reference::OutputType::I32);
            assert_eq!(reference::OutputData::I32(out), expected, "{} m={m} n={n} k={k}", kernel.name());
        }
    }
}

/// Cuts `0..len` at up to two random points (possibly inside a tile, possibly empty
/// pieces), as a 2-D partition of an output would.
fn random_cuts(rng: &mut Rng, len: usize) -> Vec<usize> {
    let mut cuts = vec![0, rng.below(len + 1), rng.below(len + 1), len];
    cuts.sort_unstable();
    cuts
}

/// The loop nest's arguments for rows `r` by columns `c` of `A · B`, into `out`.
#[allow(clippy::too_many_arguments)]
fn tile_args<'a>(
    a: &'a [u8],
    k: usize,
    a_zp: u8,
    b: &'a PackedB,
    stage: OutputStage<'a>,
    r: Range<usize>,
    c: Range<usize>,
    out: OutData<'a>,
) -> GemmArgs<'a> {
    GemmArgs { m: r.len(), a: Rows::Matrix { data: &a[r.start * k..], stride: k }, a_zp, b, stage, columns: c, out }
}

#[test]
fn output_tiles_match_reference() {
    // The loop nest on tiles of the output (rows `r0..r1` by columns `j0..j1`, cut
    // anywhere, inside a column panel too), each into its window of one output with
    // gaps between rows: together they must give the whole product, and nothing may
    // touch the gaps. Float to u8 (fused into the tiles on AVX-512) and i32.
    let mut rng = Rng(0x7111_e5ca_7e00_0001);
    // Under miri (slow: it checks every access), each kernel with its own blocking,
    // one small problem each (cuts still fall inside panels).
    let kernels: Vec<Kernel> = if cfg!(miri) { kernels().into_iter().step_by(3).collect() } else { kernels() };
    for kernel in kernels {
        let t = kernel.tile();
        for _ in 0..if cfg!(miri) { 1 } else { 24 } {
            let (m, n, k) = if cfg!(miri) {
                (1 + rng.below(2 * t.mr), 1 + rng.below(2 * t.nr), rng.below(3 * t.k_step() + 3))
            } else {
                (1 + rng.below(3 * t.mr + 3), 1 + rng.below(3 * t.nr + 3), rng.below(9 * t.k_step() + 3))
            };
            let a: Vec<u8> = (0..m * k).map(|_| rng.next() as u8).collect();
            let b: Vec<i8> = (0..k * n).map(|_| rng.next() as i8).collect();
            let (a_zp, b_zp) = (rng.next() as u8, rng.next() as i8);
            let packed = PackedB::try_new(t, &b, BLayout::KxN, k, n, &[b_zp]).unwrap();
            let bias: Vec<i32> = (0..n).map(|_| rng.next() as i32 >> 12).collect();
            let scales: Vec<f32> = (0..n).map(|_| 1.0 / (200 + rng.below(5000)) as f32).collect();
            let (rows, cols) = (random_cuts(&mut rng, m), random_cuts(&mut rng, n));
            let stride = n + 5;
            let ref_zp = reference::Channelwise::PerTensor(b_zp);
            let problem = reference::GemmProblem {
                m,
                n,
                k,
                a: &a,
                a_row_stride: k,
                a_zero_point: a_zp,
                b: &b,
                b_layout: reference::WeightLayout::KxN,
                b_zero_point: &ref_zp,
            };
            let tiles: Vec<(Range<usize>, Range<usize>)> =
                rows.windows(2).flat_map(|r| cols.windows(2).map(move |c| (r[0]..r[1], c[0]..c[1]))).collect();
            let what = format!("{} m={m} n={n} k={k} rows {rows:?} cols {cols:?}", kernel.name());
            // Every gap between rows (and past the last) keeps its fill.
            let gaps_kept = |out: &[i64], fill: i64| (0..m * stride).all(|i| i % stride < n || out[i] == fill);

            let mut out = vec![0x5a5a_5a5a_i32; m * stride];
            let mut view = OutView::new(&mut out, m, n, stride);
            for (r, c) in tiles.iter().cloned() {
                let window = OutData::I32(view.window(r.start, c.start, r.len(), c.len()));
                let stage = OutputStage { bias: Some(&bias), requant: None };
                gemm(&kernel, tile_args(&a, k, a_zp, &packed, stage, r, c, window));
            }
            let wide: Vec<i64> = out.iter().map(|&v| i64::from(v)).collect();
            assert!(gaps_kept(&wide, 0x5a5a_5a5a), "{what}: a gap was written");
            let dense: Vec<i32> = (0..m).flat_map(|r| out[r * stride..][..n].to_vec()).collect();
            let stage = reference::OutputStage::new(Some(bias.clone()), None);
            let expected = reference::gemm(&problem, &stage, reference::OutputType::I32);
            assert_eq!(reference::OutputData::I32(dense), expected, "{what}");

            let mut out = vec![0x5a_u8; m * stride];
            let mut view = OutView::new(&mut out, m, n, stride);
            let requant =
                Requant { scheme: Scheme::Float { scale: Param::Channel(&scales) }, zero_point: 7, min: 2, max: 251 };
            for (r, c) in tiles.iter().cloned() {
                let window = OutData::U8(view.window(r.start, c.start, r.len(), c.len()));
                let stage = OutputStage { bias: Some(&bias), requant: Some(requant) };
                gemm(&kernel, tile_args(&a, k, a_zp, &packed, stage, r, c, window));
            }
            let wide: Vec<i64> = out.iter().map(|&v| i64::from(v)).collect();
            assert!(gaps_kept(&wide, 0x5a), "{what}: a gap was written");
            let dense: Vec<u8> = (0..m).flat_map(|r| out[r * stride..][..n].to_vec()).collect();
            let stage = reference::OutputStage::new(
                Some(bias.clone()),
                Some(reference::Requantize::from_i32(
                    reference::Requantization::Float { scale: reference::Channelwise::PerChannel(scales.clone()) },
                    7,
                    2,
                    251,
                )),
            );
            let expected = reference::gemm(&problem, &stage, reference::OutputType::U8);
            assert_eq!(reference::OutputData::U8(dense), expected, "{what}");
        }
    }
}

/// Block calls of `line_checking_block` whose packed A, B (decoded, for 4-bit weights)
/// or accumulators did not start on a cache line, and all its block calls.
static OFF_LINE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static BLOCK_CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Records where the loop nest put packed A, B and the accumulators; computes nothing.
fn line_checking_block(args: qgemm_kernels::kernel::BlockArgs<'_>) {
    use std::sync::atomic::Ordering::Relaxed;
    let on_line = |p: usize| p.is_multiple_of(64);
    if !on_line(args.a.as_ptr().addr()) || !on_line(args.b.as_ptr().addr()) || !on_line(args.acc.as_ptr().addr()) {
        OFF_LINE.fetch_add(1, Relaxed);
    }
    BLOCK_CALLS.fetch_add(1, Relaxed);
}

fn scalar_epilogue(args: qgemm_kernels::output::EpilogueArgs<'_>) {
    qgemm_kernels::output::epilogue_scalar(args)
}

#[test]
fn packed_a_and_accumulators_start_on_a_cache_line() {
    // A tile load (AMX) or a 64-byte vector load whose rows split cache lines is much
    // slower (about 3× for a tile on a Sapphire Rapids-class Xeon), so the loop nest
    // hands every kernel packed A, B (packed, or 4-bit weights decoded a block at a
    // time, as for AMX) and accumulators that start on one. A tile of 64-byte A groups
    // and 32 columns keeps every panel and K block on a line from there; K blocks of
    // 128 make each call pass the accumulators. Scratch grows from empty, and is
    // reused at other sizes, so that its buffers sit at several addresses.
    use qgemm_kernels::driver::{Scratch, gemm_in};
    use std::sync::atomic::Ordering::Relaxed;
    let tile = qgemm_kernels::Tile::new(32, 32, 4).with_a_group(64);
    let blocking = qgemm_kernels::Blocking { mc: 64, kc: 128, nc: 64 };
    // SAFETY: the block and epilogue are plain Rust and only read their slices.
    let kernel = unsafe { Kernel::new("32x32c4-line-check", tile, blocking, line_checking_block, scalar_epilogue) };
    let mut reused = Scratch::new();
    let mut rng = Rng(0x11e5_a11c_0ff5_e700);
    for round in 0..if cfg!(miri) { 3 } else { 24 } {
        // Under miri, smaller problems (two K blocks at most).
        let (most_m, most_k, most_n) = if cfg!(miri) { (20, 250, 40) } else { (90, 400, 100) };
        let (m, k, n) = (2 + rng.below(most_m), 1 + rng.below(most_k), 1 + rng.below(most_n));
        let a: Vec<u8> = (0..m * k).map(|_| rng.next() as u8).collect();
        let packed = if round % 4 < 2 {
            let b: Vec<i8> = (0..k * n).map(|_| rng.next() as i8).collect();
            PackedB::try_new(tile, &b, BLayout::KxN, k, n, &[0]).unwrap()
        } else {
            let b: Vec<i8> = (0..k * n).map(|_| rng.below(16) as i8).collect();
            PackedB::try_new_nibbles(tile, &b, BLayout::KxN, k, n, &[8]).unwrap()
        };
        let mut out = vec![0i32; m * n];
        let args = GemmArgs {
            m,
            a: Rows::Matrix { data: &a, stride: k },
            a_zp: 3,
            b: &packed,
            stage: OutputStage { bias: None, requant: None },
            columns: 0..n,
            out: OutData::I32(OutView::new(&mut out, m, n, n)),
        };
        let mut fresh = Scratch::new();
        gemm_in(&kernel, args, if round % 2 == 0 { &mut fresh } else { &mut reused });
    }
    assert!(BLOCK_CALLS.load(Relaxed) > 0, "the kernel ran");
    assert_eq!(OFF_LINE.load(Relaxed), 0, "block calls with packed A, B or accumulators off a cache line");
}
