//! The one-row path (a GEMV, M = 1: `Kernel::row_block` / `row_with_stage`, A packed as
//! a dense row, K split over partial sums) and small M beside it, against the
//! reference byte for byte: K and N tails, every zero-point class, every output type
//! and scheme (the AVX-512 VNNI kernel fuses the Float stage into the one-row path),
//! column windows that start inside a panel, extreme data, and sums that wrap.

mod common;

use common::{Rng, gemm_kernels};
use qgemm_kernels::driver::{GemmArgs, gemm};
use qgemm_kernels::output::{OutData, OutView, OutputStage, Param, Requant, Rounding, Scheme};
use qgemm_kernels::pack::{BLayout, PackedB};
use qgemm_kernels::rows::Rows;
use qgemm_kernels::{Blocking, Kernel};
use qgemm_reference as reference;

/// Every kernel this CPU runs (the AVX2 one also without its fast path), with its own
/// blocking and a tiny one (several blocks of columns, K still taken whole by M = 1).
fn kernels() -> Vec<Kernel> {
    gemm_kernels()
        .into_iter()
        .flat_map(|base| {
            let t = base.tile();
            [base, base.with_blocking(Blocking { mc: t.mr, kc: 2 * t.k_step(), nc: 2 * t.nr })]
        })
        .collect()
}

/// How A and B are filled.
#[derive(Clone, Copy, Debug)]
enum Fill {
    Random,
    /// A = 255, B = −128 in even columns and 127 in odd ones.
    Extremes,
    /// A = 255, B alternating −128/127 along K (pairs of extremes for i16 pair sums).
    Alternating,
}

/// The per-column weight zero points of a class: one value, or one per column.
fn zero_points(class: usize, n: usize, rng: &mut Rng) -> Vec<i8> {
    match class {
        0 => vec![0],
        1 => vec![-128],
        2 => vec![127],
        3 => vec![0; n],
        _ => (0..n).map(|c| [-128, 127, 0, rng.next() as i8][c % 4]).collect(),
    }
}

fn reference_zp(zp: &[i8]) -> reference::Channelwise<i8> {
    if zp.len() > 1 {
        reference::Channelwise::PerChannel(zp.to_vec())
    } else {
        reference::Channelwise::PerTensor(zp[0])
    }
}

/// The output stages checked: i32 with bias, then u8/i8 through every scheme (Float
/// per tensor and per column, the three fixed-point roundings), with and without bias.
fn stages(n: usize, rng: &mut Rng) -> Vec<(reference::OutputStage, reference::OutputType)> {
    use reference::{Channelwise, FixedPointParams, OutputStage, OutputType, Requantization, Requantize};
    let bias: Vec<i32> = (0..n).map(|_| rng.next() as i32 >> 8).collect();
    let fixed = FixedPointParams::new(Channelwise::PerTensor(1 << 30), Channelwise::PerTensor(-12));
    let fixed_cols = FixedPointParams::new(
        Channelwise::PerChannel((0..n).map(|c| (1 << 30) + c as i32 * 4099).collect()),
        Channelwise::PerChannel((0..n).map(|c| -10 - (c % 5) as i32).collect()),
    );
    let schemes = [
        Requantization::Float { scale: Channelwise::PerTensor(1.0 / 5000.0) },
        Requantization::Float { scale: Channelwise::PerChannel((0..n).map(|c| 1.0 / (3000.0 + c as f32)).collect()) },
        Requantization::FixedPoint(fixed.clone()),
        Requantization::FixedPointHalfUp(fixed_cols),
        Requantization::FixedPointSingleRounding(fixed),
    ];
    let mut v = vec![(OutputStage::new(Some(bias.clone()), None), OutputType::I32)];
    for (i, scheme) in schemes.into_iter().enumerate() {
        let (out, zero_point, min, max) =
            if i % 2 == 0 { (OutputType::U8, 128, 0, 255) } else { (OutputType::I8, -3, -100, 127) };
        let b = if i % 2 == 0 { Some(bias.clone()) } else { None };
        v.push((OutputStage::new(b, Some(Requantize::from_i32(scheme, zero_point, min, max))), out));
    }
    v
}

/// The kernels crate's stage for a reference one.
fn lower<'a>(stage: &'a reference::OutputStage) -> OutputStage<'a> {
    use reference::{Channelwise, Requantization};
    fn param<T: Copy>(c: &Channelwise<T>) -> Param<'_, T> {
        match c {
            Channelwise::PerTensor(v) => Param::Tensor(*v),
            Channelwise::PerChannel(v) => Param::Channel(v),
        }
    }
    let requant = stage.requantize.as_ref().map(|r| Requant {
        scheme: match &r.scheme {
            Requantization::Float { scale } => Scheme::Float { scale: param(scale) },
            Requantization::FixedPoint(p) => Scheme::FixedPoint {
                rounding: Rounding::DoubleTiesAway,
                multiplier: param(&p.multiplier),
                shift: param(&p.shift),
            },
            Requantization::FixedPointHalfUp(p) => Scheme::FixedPoint {
                rounding: Rounding::DoubleHalfUp,
                multiplier: param(&p.multiplier),
                shift: param(&p.shift),
            },
            Requantization::FixedPointSingleRounding(p) => Scheme::FixedPoint {
                rounding: Rounding::Single,
                multiplier: param(&p.multiplier),
                shift: param(&p.shift),
            },
            other => panic!("no lowering for {}", other.name()),
        },
        zero_point: r.zero_point,
        min: r.min,
        max: r.max,
    });
    OutputStage { bias: stage.bias.as_deref(), requant }
}

/// One problem: `m × k` A, `k × n` B, run through the driver on `kernel` for columns
/// `cols` of the product, against the reference's same columns.
struct Case {
    m: usize,
    k: usize,
    n: usize,
    a: Vec<u8>,
    a_zp: u8,
    b: Vec<i8>,
    b_zp: Vec<i8>,
}

impl Case {
    fn new(rng: &mut Rng, m: usize, k: usize, n: usize, fill: Fill, zp_class: usize) -> Case {
        let (a, b): (Vec<u8>, Vec<i8>) = match fill {
            Fill::Random => {
                ((0..m * k).map(|_| rng.next() as u8).collect(), (0..k * n).map(|_| rng.next() as i8).collect())
            }
            Fill::Extremes => {
                (vec![255; m * k], (0..k * n).map(|i| if (i % n).is_multiple_of(2) { -128 } else { 127 }).collect())
            }
            Fill::Alternating => {
                (vec![255; m * k], (0..k * n).map(|i| if (i / n).is_multiple_of(2) { -128 } else { 127 }).collect())
            }
        };
        let a_zp = [0, 255, 128, rng.next() as u8][rng.below(4)];
        let b_zp = zero_points(zp_class, n, rng);
        Case { m, k, n, a, a_zp, b, b_zp }
    }

    fn check(
        &self,
        kernel: &Kernel,
        stage: &reference::OutputStage,
        out_type: reference::OutputType,
        cols: std::ops::Range<usize>,
    ) {
        let Case { m, k, n, .. } = *self;
        let zp = reference_zp(&self.b_zp);
        let problem = reference::GemmProblem {
            m,
            n,
            k,
            a: &self.a,
            a_row_stride: k,
            a_zero_point: self.a_zp,
            b: &self.b,
            b_layout: reference::WeightLayout::KxN,
            b_zero_point: &zp,
        };
        let expected = reference::gemm(&problem, stage, out_type);
        let packed = PackedB::try_new(kernel.tile(), &self.b, BLayout::KxN, k, n, &self.b_zp).unwrap();
        let w = cols.len();
        let run = |out: OutData<'_>| {
            gemm(
                kernel,
                GemmArgs {
                    m,
                    a: Rows::Matrix { data: &self.a, stride: k },
                    a_zp: self.a_zp,
                    b: &packed,
                    stage: lower(stage),
                    columns: cols.clone(),
                    out,
                },
            )
        };
        let window = |v: Vec<i64>| -> Vec<i64> {
            (0..m).flat_map(|r| v[r * n + cols.start..r * n + cols.end].to_vec()).collect()
        };
        let (got, want): (Vec<i64>, Vec<i64>) = match expected {
            reference::OutputData::I32(e) => {
                let mut o = vec![0i32; m * w];
                run(OutData::I32(OutView::new(&mut o, m, w, w)));
                (o.into_iter().map(i64::from).collect(), window(e.into_iter().map(i64::from).collect()))
            }
            reference::OutputData::U8(e) => {
                let mut o = vec![0u8; m * w];
                run(OutData::U8(OutView::new(&mut o, m, w, w)));
                (o.into_iter().map(i64::from).collect(), window(e.into_iter().map(i64::from).collect()))
            }
            reference::OutputData::I8(e) => {
                let mut o = vec![0i8; m * w];
                run(OutData::I8(OutView::new(&mut o, m, w, w)));
                (o.into_iter().map(i64::from).collect(), window(e.into_iter().map(i64::from).collect()))
            }
            reference::OutputData::F32(_) => panic!("the kernels store no f32 (the public crate converts i32)"),
        };
        if let Some(i) = got.iter().zip(&want).position(|(g, e)| g != e) {
            panic!(
                "{}: m={m} k={k} n={n} cols={cols:?} a_zp={} b_zp={:?}.. {out_type:?} {:?}: [{}][{}] got {}, expected {}",
                kernel.name(),
                self.a_zp,
                &self.b_zp[..self.b_zp.len().min(4)],
                stage.requantize.as_ref().map(|r| &r.scheme),
                i / w,
                i % w,
                got[i],
                want[i]
            );
        }
    }
}

#[test]
fn gemv_and_small_m_k_and_n_tails() {
    let mut rng = Rng(0x6e3f_0001_a5a5_0042);
    for kernel in kernels() {
        for m in [1, 2, 3] {
            for k in [1, 3, 4, 5, 63, 65, 4097] {
                for n in [1, 15, 17, 47, 49, 97] {
                    let fill = [Fill::Random, Fill::Extremes, Fill::Alternating][rng.below(3)];
                    let zp_class = rng.below(5);
                    let case = Case::new(&mut rng, m, k, n, fill, zp_class);
                    let all = stages(n, &mut rng);
                    let (stage, out) = &all[rng.below(all.len())];
                    case.check(&kernel, stage, *out, 0..n);
                }
            }
        }
    }
}

#[test]
fn gemv_every_stage_and_zero_point_class() {
    let mut rng = Rng(0x6e3f_0002_5a5a_0017);
    for kernel in kernels() {
        for (k, n) in [(65, 49), (300, 100)] {
            for zp_class in 0..5 {
                for fill in [Fill::Random, Fill::Extremes, Fill::Alternating] {
                    let case = Case::new(&mut rng, 1, k, n, fill, zp_class);
                    for (stage, out) in stages(n, &mut rng) {
                        case.check(&kernel, &stage, out, 0..n);
                    }
                }
            }
        }
    }
}

#[test]
fn gemv_column_windows_inside_panels() {
    // A partition's window of columns may start inside a panel: the block before it is
    // computed whole and stored from the window's first column.
    let mut rng = Rng(0x6e3f_0003_0bad_cafe);
    for kernel in kernels() {
        let nr = kernel.tile().nr;
        let n = 3 * nr + 5;
        for cols in [1..n, nr - 1..2 * nr + 3, nr..n, n - 1..n, 0..1] {
            let zp_class = rng.below(5);
            let case = Case::new(&mut rng, 1, 131, n, Fill::Random, zp_class);
            for (stage, out) in stages(n, &mut rng) {
                case.check(&kernel, &stage, out, cols.clone());
            }
        }
    }
}

#[test]
fn gemv_large_k_and_n() {
    // K = 4097 and N = 4095: every k-group tail and a last panel of 15 real columns
    // (AVX-512 VNNI: one vector of three), with the kernels' own blocking.
    let mut rng = Rng(0x6e3f_0004_1234_5678);
    for kernel in gemm_kernels() {
        let case = Case::new(&mut rng, 1, 4097, 4095, Fill::Random, 4);
        let all = stages(4095, &mut rng);
        for (stage, out) in [&all[0], &all[1], &all[4]] {
            case.check(&kernel, stage, *out, 0..4095);
        }
    }
}

#[test]
fn gemv_sums_wrap() {
    // One row, K = 70 000 taken whole (the one-row path never blocks K; its dense row
    // fits the packing bound for K up to 256 Ki at least), read in place: A = 255 against
    // −128 (the sum falls below i32::MIN) and 127 (above i32::MAX), in every partial
    // sum of the K split.
    let mut rng = Rng(0x6e3f_0005_7777_0001);
    for kernel in gemm_kernels() {
        for n in [2, 49] {
            let case = Case::new(&mut rng, 1, 70_000, n, Fill::Extremes, 0);
            let case = Case { a_zp: 0, ..case };
            let stage = reference::OutputStage::i32();
            let zp = reference::Channelwise::PerTensor(0);
            let want = reference::gemm_accumulators(&reference::GemmProblem {
                m: 1,
                n,
                k: 70_000,
                a: &case.a,
                a_row_stride: 70_000,
                a_zero_point: 0,
                b: &case.b,
                b_layout: reference::WeightLayout::KxN,
                b_zero_point: &zp,
            });
            assert!(want[0] > 0 && want[1] < 0, "the reference's sums wrapped");
            case.check(&kernel, &stage, reference::OutputType::I32, 0..n);
        }
    }
}
