//! Decodes the input into a whole GEMM problem (shape, strides, zero points, weight
//! layout, output type, scheme and parameters, clamp, data biased toward extremes),
//! runs it on every ISA this CPU has, and demands byte equality with the reference.
//!
//! `cargo +nightly fuzz run gemm_equivalence -- -detect_leaks=0` (from the repository
//! root). Leak detection is off because LeakSanitizer reports the 32-byte record glibc
//! allocates in `__cxa_thread_atexit_impl` for the thread-local destructors of the
//! worker threads that multi-threaded runs spawn: a false positive that does not
//! reproduce on the saved input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use qgemm::reference::{self, GemmProblem, OutputData};
use qgemm::{
    Activations, Channelwise, FixedPointParams, Options, OutputMatrix, OutputStage, OutputType, PackedWeights,
    Requantization, Requantize, WeightLayout, Weights,
};

/// Reads bytes from the input, then zeros once it is exhausted.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n
    }
    fn i32(&mut self) -> i32 {
        i32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }
    /// A data byte: the fuzzer's, or one of the extremes.
    fn data(&mut self) -> u8 {
        match self.byte() {
            0..=15 => 0,
            16..=31 => 255,
            32..=47 => 128,
            48..=63 => 127,
            _ => self.byte(),
        }
    }
}

fuzz_target!(|bytes: &[u8]| {
    let mut inp = Input(bytes);
    let (m, n, k) = (inp.below(20), inp.below(70), inp.below(80));
    let a_stride = k + inp.below(3);
    let out_stride = n + inp.below(3);
    let a_zp = inp.data();
    let layout = if inp.below(2) == 0 { WeightLayout::KxN } else { WeightLayout::NxK };
    let b_zp = if inp.below(2) == 0 {
        Channelwise::PerTensor(inp.data() as i8)
    } else {
        Channelwise::PerChannel((0..n).map(|_| inp.data() as i8).collect())
    };
    let bias = if inp.below(2) == 0 { None } else { Some((0..n).map(|_| inp.i32() >> inp.below(32)).collect()) };
    let out = [OutputType::I32, OutputType::U8, OutputType::I8][inp.below(3)];
    let requantize = (out != OutputType::I32).then(|| {
        let per_channel = inp.below(2) == 0;
        let mut channelwise = |f: &mut dyn FnMut(&mut Input) -> i32| {
            if per_channel {
                Channelwise::PerChannel((0..n).map(|_| f(&mut inp)).collect())
            } else {
                Channelwise::PerTensor(f(&mut inp))
            }
        };
        let multiplier = channelwise(&mut |i| if i.below(8) == 0 { 0 } else { (1 << 30) | (i.i32() & 0x3fff_ffff) });
        let shift = channelwise(&mut |i| i.below(62) as i32 - 31);
        let params = FixedPointParams { multiplier, shift };
        let scheme = match inp.below(4) {
            0 => Requantization::FixedPoint(params),
            1 => Requantization::FixedPointHalfUp(params),
            2 => Requantization::FixedPointSingleRounding(params),
            _ => {
                let scale = |i: &mut Input| f32::from_bits(0x3000_0000 + (i.i32() as u32 & 0x0fff_ffff));
                Requantization::Float {
                    scale: if per_channel {
                        Channelwise::PerChannel((0..n).map(|_| scale(&mut inp)).collect())
                    } else {
                        Channelwise::PerTensor(scale(&mut inp))
                    },
                }
            }
        };
        let (lo, _) = out.range();
        let zero_point = lo + i32::from(inp.byte());
        let (x, y) = (lo + i32::from(inp.byte()), lo + i32::from(inp.byte()));
        Requantize { scheme, zero_point, min: x.min(y), max: x.max(y) }
    });
    let stage = OutputStage { bias, requantize };
    let a: Vec<u8> = (0..m * a_stride).map(|_| inp.data()).collect();
    let b: Vec<i8> = (0..k * n).map(|_| inp.data() as i8).collect();

    let problem = GemmProblem {
        m,
        n,
        k,
        a: &a,
        a_row_stride: a_stride,
        a_zero_point: a_zp,
        b: &b,
        b_layout: layout,
        b_zero_point: &b_zp,
    };
    let expected = reference::gemm(&problem, &stage, out);
    for &isa in qgemm::available_isas() {
        let packed = PackedWeights::for_isa(isa, Weights { data: &b, layout, k, n, zero_point: &b_zp }).unwrap();
        let activations = Activations::new(&a, m, k, a_zp).with_row_stride(a_stride);
        let options = Options::new().with_threads(1 + m % 3).with_isa(isa);
        let len = if m == 0 { 0 } else { (m - 1) * out_stride + n };
        let dense = |i: usize| (i / n.max(1)) * out_stride + i % n.max(1);
        let got = match out {
            OutputType::I32 => {
                let mut c = vec![0i32; len];
                let matrix = OutputMatrix::i32(&mut c, m, n).with_row_stride(out_stride);
                qgemm::gemm_with(&activations, &packed, &stage, matrix, &options).unwrap();
                OutputData::I32((0..m * n).map(|i| c[dense(i)]).collect())
            }
            OutputType::U8 => {
                let mut c = vec![0u8; len];
                let matrix = OutputMatrix::u8(&mut c, m, n).with_row_stride(out_stride);
                qgemm::gemm_with(&activations, &packed, &stage, matrix, &options).unwrap();
                OutputData::U8((0..m * n).map(|i| c[dense(i)]).collect())
            }
            OutputType::I8 => {
                let mut c = vec![0i8; len];
                let matrix = OutputMatrix::i8(&mut c, m, n).with_row_stride(out_stride);
                qgemm::gemm_with(&activations, &packed, &stage, matrix, &options).unwrap();
                OutputData::I8((0..m * n).map(|i| c[dense(i)]).collect())
            }
        };
        assert_eq!(got, expected, "{isa} differs from the reference");
    }
});
