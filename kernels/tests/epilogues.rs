//! Every kernel's output stage against the scalar one, on accumulators chosen to hit
//! each rounding corner: i32::MIN and MAX, exact ties at every shift, values that
//! overflow the left shift, and the wrapping of the zero-point correction. The GEMM
//! tests reach these stages only through products; here every scheme, shift, zero
//! point class and clamp is driven directly, byte for byte: through each kernel's
//! epilogue, and through its tiles (`Kernel::block_with_stage` on a block of no
//! k-groups that accumulates onto these values, which is where the NEON kernels apply
//! the stage in registers).

mod common;

use common::{Rng, gemm_kernels};
use qgemm_kernels::Kernel;
use qgemm_kernels::kernel::BlockArgs;
use qgemm_kernels::output::{
    EpilogueArgs, OutData, OutView, OutputStage, Param, Requant, Rounding, Scheme, ZeroPoints, epilogue_scalar,
};

const ROWS: usize = 3;
const COLS: usize = 21; // two vectors of 8 and a tail of 5; one of 16 and a tail of 5
const ACC_STRIDE: usize = 24;
// Gaps of 19 between rows, and as much again past the last row, inside the buffer the
// test checks: a store that runs past a row's last column by up to a vector of 16
// bytes lands where the test sees it, never outside the buffer.
const OUT_STRIDE: usize = 40;
const GUARD: usize = OUT_STRIDE - COLS;

/// Accumulators: the extremes, powers of two and their neighbours (the ties of
/// every shift once scaled), and random values.
fn accumulators(rng: &mut Rng) -> Vec<i32> {
    let mut specials = vec![0, 1, -1, i32::MIN, i32::MAX, i32::MIN + 1, i32::MAX - 1];
    for e in 0..31 {
        let p = 1i32 << e;
        specials.extend([p, -p, p + 1, -p - 1, p - 1, 1 - p, p + p / 2, -(p + p / 2), 3 * (p / 2).max(1)]);
    }
    let mut acc = vec![0i32; ROWS * ACC_STRIDE];
    for (i, v) in acc.iter_mut().enumerate() {
        *v = if i % 3 == 2 { rng.next() as i32 } else { specials[(rng.below(specials.len()) + i) % specials.len()] };
    }
    acc
}

/// The per-column parameters of one case.
struct Columns {
    col_offsets: Vec<i32>,
    b_zp: Vec<i32>,
    bias: Vec<i32>,
    multipliers: Vec<i32>,
    shifts: Vec<i32>,
    scales: Vec<f32>,
}

fn columns(rng: &mut Rng, b_zp_class: usize) -> Columns {
    let extreme = [i32::MIN, i32::MAX, 0, -1, 1, 1 << 24];
    let pick = |rng: &mut Rng| if rng.below(3) == 0 { extreme[rng.below(extreme.len())] } else { rng.next() as i32 };
    let col_offsets = (0..COLS).map(|_| pick(rng)).collect();
    let b_zp = (0..COLS)
        .map(|j| match b_zp_class {
            0 => 0,
            1 => [-128, 127, 0, 1, -1][j % 5],
            _ => (rng.below(256) as i32) - 128,
        })
        .collect();
    let bias = (0..COLS).map(|_| pick(rng)).collect();
    let multipliers = (0..COLS)
        .map(|j| match j % 4 {
            0 => 1 << 30,
            1 => i32::MAX,
            2 => 0,
            _ => (1 << 30) + (rng.next() % (1 << 30)) as i32,
        })
        .collect();
    let shifts = (0..COLS).map(|_| rng.below(62) as i32 - 31).collect();
    let scales = (0..COLS)
        .map(|j| [0.5f32, 1.0, 2.0f32.powi(-20), 3.0e-5, 0.25, 1.5e-9, 7.0][j % 7] * (1.0 + (j as f32) / 64.0))
        .collect();
    Columns { col_offsets, b_zp, bias, multipliers, shifts, scales }
}

/// Runs `f` with the output stage of every scheme, per tensor and per channel, and
/// every output type, zero point and clamp class.
fn for_each_stage(c: &Columns, rng: &mut Rng, mut f: impl FnMut(OutputStage<'_>, &str)) {
    for bias in [None, Some(&c.bias[..])] {
        f(OutputStage { bias, requant: None }, "i32");
        for (zp, min, max) in [(0, 0, 255), (128, 0, 255), (-128, -128, 127), (3, -100, 90), (255, 7, 7), (10, 10, 255)]
        {
            let mut schemes = vec![
                Scheme::Float { scale: Param::Channel(&c.scales) },
                Scheme::Float { scale: Param::Tensor(0.5) },
                Scheme::Float { scale: Param::Tensor(c.scales[rng.below(COLS)]) },
            ];
            for rounding in [Rounding::DoubleTiesAway, Rounding::DoubleHalfUp, Rounding::Single] {
                schemes.push(Scheme::FixedPoint {
                    rounding,
                    multiplier: Param::Channel(&c.multipliers),
                    shift: Param::Channel(&c.shifts),
                });
                for shift in [-31, -30, -17, -1, 0, 1, 5, 30, rng.below(62) as i32 - 31] {
                    let multiplier = c.multipliers[rng.below(COLS)];
                    schemes.push(Scheme::FixedPoint {
                        rounding,
                        multiplier: Param::Tensor(multiplier),
                        shift: Param::Tensor(shift),
                    });
                }
            }
            for scheme in schemes {
                let stage = OutputStage { bias, requant: Some(Requant { scheme, zero_point: zp, min, max }) };
                f(stage, if min < 0 { "i8" } else { "u8" });
            }
        }
    }
}

/// The output of one epilogue, stride gaps and the guard past the last row included
/// (they must keep their fill).
fn run(
    epilogue: &dyn Fn(EpilogueArgs<'_>),
    acc: &[i32],
    row_sums: &[i32],
    zero_points: ZeroPoints<'_>,
    stage: OutputStage<'_>,
    out_type: &str,
) -> Vec<i64> {
    let len = (ROWS - 1) * OUT_STRIDE + COLS;
    let args =
        |out| EpilogueArgs { acc, acc_stride: ACC_STRIDE, rows: ROWS, cols: COLS, row_sums, zero_points, stage, out };
    match out_type {
        "i32" => {
            let mut out = vec![0x5a5a_5a5a_i32; len + GUARD];
            epilogue(args(OutData::I32(OutView::new(&mut out[..len], ROWS, COLS, OUT_STRIDE))));
            out.into_iter().map(i64::from).collect()
        }
        "u8" => {
            let mut out = vec![0x5a_u8; len + GUARD];
            epilogue(args(OutData::U8(OutView::new(&mut out[..len], ROWS, COLS, OUT_STRIDE))));
            out.into_iter().map(i64::from).collect()
        }
        _ => {
            let mut out = vec![0x5a_i8; len + GUARD];
            epilogue(args(OutData::I8(OutView::new(&mut out[..len], ROWS, COLS, OUT_STRIDE))));
            out.into_iter().map(i64::from).collect()
        }
    }
}

/// The stage through `kernel`'s tiles: a block of no k-groups whose tiles add their
/// (zero) sums to accumulators holding `acc`, laid out for the kernel's tile.
fn through_tiles(kernel: &Kernel, acc: &[i32], stage: EpilogueArgs<'_>) {
    let t = kernel.tile();
    let (row_panels, col_panels) = (ROWS.div_ceil(t.mr), COLS.div_ceil(t.nr));
    let stride = col_panels * t.nr;
    let mut tile_acc = vec![0i32; row_panels * t.mr * stride];
    for r in 0..ROWS {
        tile_acc[r * stride..][..COLS].copy_from_slice(&acc[r * ACC_STRIDE..][..COLS]);
    }
    let block = BlockArgs {
        a: &[],
        b: &[],
        b_panel_stride: 0,
        row_panels,
        rows: ROWS,
        col_panels,
        cols: COLS,
        kgroups: 0,
        acc: &mut tile_acc,
        acc_stride: stride,
        accumulate: true,
    };
    kernel.block_with_stage(block, EpilogueArgs { acc: &[], acc_stride: 0, ..stage });
}

#[test]
fn every_epilogue_matches_the_scalar_one() {
    let mut rng = Rng(0x0e91_7a0e_5eed_0001);
    let mut cases = 0;
    for b_zp_class in 0..3 {
        for a_zp in [0, 1, 128, 255, -128, -1] {
            let acc = accumulators(&mut rng);
            let c = columns(&mut rng, b_zp_class);
            let row_sums: Vec<i32> = [i32::MIN, i32::MAX, rng.next() as i32].to_vec();
            let zero_points = ZeroPoints { a_zp, col_offsets: &c.col_offsets, b_zp: &c.b_zp };
            for_each_stage(&c, &mut rng, |stage, out_type| {
                let want = run(&|a| epilogue_scalar(a), &acc, &row_sums, zero_points, stage, out_type);
                for kernel in gemm_kernels() {
                    let got = run(&|a| kernel.epilogue(a), &acc, &row_sums, zero_points, stage, out_type);
                    assert_eq!(
                        got,
                        want,
                        "{}: {out_type} a_zp {a_zp} b_zp class {b_zp_class} {stage:?}",
                        kernel.name()
                    );
                    let staged = |a: EpilogueArgs<'_>| through_tiles(&kernel, &acc, a);
                    let got = run(&staged, &acc, &row_sums, zero_points, stage, out_type);
                    assert_eq!(
                        got,
                        want,
                        "{} tiles: {out_type} a_zp {a_zp} b_zp {b_zp_class} {stage:?}",
                        kernel.name()
                    );
                }
                cases += 1;
            });
        }
    }
    assert!(cases > 1000, "{cases} cases");
}
