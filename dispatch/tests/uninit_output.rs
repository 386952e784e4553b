//! Output into uninitialized memory (`OutputMatrix::*_uninit`): every output type,
//! GEMM and convolution, strided, on every ISA and 1 and 3 threads, gives the same
//! bytes as an initialized buffer; the gaps between rows keep what they held; an error
//! writes nothing.

mod common;

use std::mem::MaybeUninit;

use common::{ConvCase, GemmCase, Rng, dequantize_for, requantize_for, schemes};
use qgemm::reference::OutputData;
use qgemm::{Activations, ConvInput, OutputMatrix, OutputType, PackedWeights, Weights};

const GAP: u8 = 0xa7;

/// Runs `call` on an uninitialized-typed buffer whose gaps hold a sentinel (and whose
/// window holds one too, which the call must overwrite), and returns the window and
/// whether the gaps kept their sentinel.
fn run_uninit(
    out: OutputType,
    rows: usize,
    cols: usize,
    stride: usize,
    call: impl FnOnce(OutputMatrix<'_>) -> qgemm::Result<()>,
) -> (qgemm::Result<OutputData>, bool) {
    let len = if rows == 0 { 0 } else { (rows - 1) * stride + cols };
    fn window<T: Copy>(v: &[MaybeUninit<T>], rows: usize, cols: usize, stride: usize) -> Vec<T> {
        // SAFETY: every element was initialized (the sentinel, then the call).
        (0..rows).flat_map(|r| (0..cols).map(move |c| unsafe { v[r * stride + c].assume_init() })).collect()
    }
    macro_rules! go {
        ($t:ty, $fill:expr, $ctor:ident, $variant:ident, $is_gap:expr) => {{
            let mut v: Vec<MaybeUninit<$t>> = vec![MaybeUninit::new($fill); len];
            let r = call(OutputMatrix::$ctor(&mut v, rows, cols).with_row_stride(stride));
            // SAFETY: every element holds the sentinel or a value the call wrote.
            let gaps = v.iter().enumerate().all(|(i, x)| i % stride < cols || $is_gap(unsafe { x.assume_init() }));
            (r.map(|()| OutputData::$variant(window(&v, rows, cols, stride))), gaps)
        }};
    }
    match out {
        OutputType::U8 => go!(u8, GAP, u8_uninit, U8, |x: u8| x == GAP),
        OutputType::I8 => go!(i8, GAP as i8, i8_uninit, I8, |x: i8| x == GAP as i8),
        OutputType::I32 => go!(i32, 0x5a5a_5a5a, i32_uninit, I32, |x: i32| x == 0x5a5a_5a5a),
        _ => go!(f32, f32::from_bits(0x5a5a_5a5a), f32_uninit, F32, |x: f32| x.to_bits() == 0x5a5a_5a5a),
    }
}

#[test]
fn uninitialized_outputs_equal_initialized_ones() {
    let mut rng = Rng::new(0x0417);
    for (i, out) in [OutputType::U8, OutputType::I8, OutputType::I32, OutputType::F32].into_iter().enumerate() {
        let (m, n, k) = (13 + i, 21, 70);
        let mut case = GemmCase::random(&mut rng, m, n, k);
        case = match out {
            OutputType::U8 | OutputType::I8 => {
                let all = schemes(&mut rng, n, true, k);
                let scheme = all[rng.below(all.len())].clone();
                let r = requantize_for(&mut rng, scheme, out);
                case.with_output(out, Some(r))
            }
            _ => case.with_output(out, None),
        };
        if out == OutputType::F32 {
            case.stage.dequantize = Some(dequantize_for(&mut rng, n, false, true));
        }
        let expected = case.expected();
        for &isa in qgemm::available_isas() {
            let weights = Weights::new(&case.b, case.layout, k, n).with_zero_point(case.b_zp.clone());
            let packed = PackedWeights::for_isa(isa, weights).unwrap();
            for threads in [1, 3] {
                let options = qgemm::Options::new().with_threads(threads);
                let a = Activations::new(&case.a, m, k, case.a_zp);
                let (got, gaps) =
                    run_uninit(out, m, n, n + 3, |c| qgemm::gemm_with(&a, &packed, &case.stage, c, &options));
                assert!(got.unwrap() == expected && gaps, "{isa}, {threads} threads, {out:?}");
            }
            // An error (A one value short) writes nothing, not even the zeros.
            let a = Activations::new(&case.a[..m * k - 1], m, k, case.a_zp);
            let (got, gaps) = run_uninit(out, m, n, n, |c| qgemm::gemm(&a, &packed, &case.stage, c));
            assert!(got.is_err() && gaps);
        }
        // A convolution into uninitialized memory.
        let params = qgemm::Conv2dParams::new([1, 6, 5, 8], 12, [3, 3]).with_padding(1, 1, 1, 1);
        let mut conv = ConvCase::random(&mut rng, params);
        conv.out = out;
        conv.stage = case.stage.clone();
        conv.stage.bias = None;
        if let Some(r) = conv.stage.requantize.as_mut() {
            r.scheme = qgemm::Requantization::float(1.0 / 2048.0);
        }
        if let Some(d) = conv.stage.dequantize.as_mut() {
            d.bias = None;
        }
        let expected = conv.expected();
        for &isa in qgemm::available_isas() {
            let packed = conv.packed(isa);
            let input = ConvInput::new(&conv.input, conv.input_zp);
            let options = qgemm::Options::new().with_isa(isa);
            let (got, gaps) =
                run_uninit(out, 30, 12, 12, |c| qgemm::conv2d_with(&input, &packed, &params, &conv.stage, c, &options));
            assert!(got.unwrap() == expected && gaps, "conv {isa} {out:?}");
        }
    }
}

#[test]
fn truly_uninitialized_memory_is_written_before_it_is_read() {
    // A `Vec`'s spare capacity, never written before the call: under miri (CI runs
    // this file there), reading any of it before qgemm writes it is an error.
    let (m, k, n) = (5, 33, 7);
    let a: Vec<u8> = (0..m * k).map(|i| (i * 31) as u8).collect();
    let b: Vec<i8> = (0..k * n).map(|i| (i * 17) as u8 as i8).collect();
    let packed = PackedWeights::new(Weights::kxn(&b, k, n).with_zero_point(3i8)).unwrap();
    let stage = qgemm::OutputStage::i32();
    let mut c: Vec<i32> = Vec::with_capacity(m * n);
    let out = OutputMatrix::i32_uninit(&mut c.spare_capacity_mut()[..m * n], m, n);
    qgemm::gemm(&Activations::new(&a, m, k, 1), &packed, &stage, out).unwrap();
    // SAFETY: the call initialized the m × n elements.
    unsafe { c.set_len(m * n) };
    let mut want = vec![0i32; m * n];
    qgemm::gemm(&Activations::new(&a, m, k, 1), &packed, &stage, OutputMatrix::i32(&mut want, m, n)).unwrap();
    assert_eq!(c, want);
}
