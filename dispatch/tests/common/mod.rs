//! The equivalence harness: builds problems, runs them on every ISA this CPU has, and
//! demands byte equality with the reference, including that the gaps between output
//! rows are left untouched.

#![allow(dead_code)]

use qgemm::reference::{self, Conv2dProblem, GemmProblem, OutputData};
use qgemm::{
    Activations, Channelwise, Conv2dParams, ConvInput, ConvWeights, FixedPointParams, Isa, Options, OutputMatrix,
    OutputStage, OutputType, PackedConvWeights, PackedWeights, Requantization, Requantize, WeightLayout, Weights,
};

/// xorshift64*: deterministic, dependency-free data.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn u8(&mut self) -> u8 {
        (self.next_u64() >> 56) as u8
    }
    pub fn i8(&mut self) -> i8 {
        self.u8() as i8
    }
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }
}

/// How the weights are filled: random, or the extremes that break saturating kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightFill {
    Random,
    AllMin,
    AllMax,
    /// −128, 127, −128, 127, …
    Alternating,
    /// −128, −128, 127, 127, …: pairs of equal extremes along K.
    Pairs,
}

pub const WEIGHT_FILLS: [WeightFill; 5] =
    [WeightFill::Random, WeightFill::AllMin, WeightFill::AllMax, WeightFill::Alternating, WeightFill::Pairs];

/// Weights B as K×N values `b[k][n]`, filled as asked; the index along K decides the
/// pattern so that adjacent k values (what kernels pair up) are the extremes.
pub fn weights_kxn(rng: &mut Rng, k: usize, n: usize, fill: WeightFill) -> Vec<i8> {
    let mut b = vec![0i8; k * n];
    for kk in 0..k {
        for nn in 0..n {
            b[kk * n + nn] = match fill {
                WeightFill::Random => rng.i8(),
                WeightFill::AllMin => -128,
                WeightFill::AllMax => 127,
                WeightFill::Alternating => [-128, 127][kk % 2],
                WeightFill::Pairs => [-128, 127][(kk / 2) % 2],
            };
        }
    }
    b
}

/// K×N values re-laid out as asked.
pub fn lay_out(b_kxn: &[i8], k: usize, n: usize, layout: WeightLayout) -> Vec<i8> {
    match layout {
        WeightLayout::KxN => b_kxn.to_vec(),
        WeightLayout::NxK => (0..n).flat_map(|nn| (0..k).map(move |kk| b_kxn[kk * n + nn])).collect(),
    }
}

/// One GEMM problem with its output stage and output layout.
#[derive(Clone, Debug)]
pub struct GemmCase {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: Vec<u8>,
    pub a_stride: usize,
    pub a_zp: u8,
    /// In `layout`.
    pub b: Vec<i8>,
    pub layout: WeightLayout,
    pub b_zp: Channelwise<i8>,
    pub stage: OutputStage,
    pub out: OutputType,
    pub out_stride: usize,
}

impl GemmCase {
    /// A random problem with i32 output and no bias; adjust the fields after.
    pub fn random(rng: &mut Rng, m: usize, n: usize, k: usize) -> GemmCase {
        let b = weights_kxn(rng, k, n, WeightFill::Random);
        GemmCase {
            m,
            n,
            k,
            a: (0..m * k).map(|_| rng.u8()).collect(),
            a_stride: k,
            a_zp: rng.u8(),
            b,
            layout: WeightLayout::KxN,
            b_zp: Channelwise::PerTensor(rng.i8()),
            stage: OutputStage::default(),
            out: OutputType::I32,
            out_stride: n,
        }
    }

    /// Rewrites A with row stride `stride`, filling the gaps with noise.
    pub fn with_a_stride(mut self, rng: &mut Rng, stride: usize) -> GemmCase {
        let mut a = vec![0u8; self.m * stride];
        for (i, x) in a.iter_mut().enumerate() {
            *x = if i % stride < self.k { self.a[(i / stride) * self.a_stride + i % stride] } else { rng.u8() };
        }
        self.a = a;
        self.a_stride = stride;
        self
    }

    /// Re-lays out B.
    pub fn with_layout(mut self, layout: WeightLayout) -> GemmCase {
        assert_eq!(self.layout, WeightLayout::KxN);
        self.b = lay_out(&self.b, self.k, self.n, layout);
        self.layout = layout;
        self
    }

    pub fn with_output(mut self, out: OutputType, requantize: Option<Requantize>) -> GemmCase {
        self.out = out;
        self.stage.requantize = requantize;
        self
    }

    pub fn problem(&self) -> GemmProblem<'_> {
        GemmProblem {
            m: self.m,
            n: self.n,
            k: self.k,
            a: &self.a,
            a_row_stride: self.a_stride,
            a_zero_point: self.a_zp,
            b: &self.b,
            b_layout: self.layout,
            b_zero_point: &self.b_zp,
        }
    }

    pub fn expected(&self) -> OutputData {
        reference::gemm(&self.problem(), &self.stage, self.out)
    }

    /// Runs the case on `isa` with `threads`; returns the dense result and whether the
    /// gaps between rows kept their sentinel.
    pub fn run(&self, isa: Isa, threads: usize) -> (OutputData, bool) {
        let packed = PackedWeights::for_isa(
            isa,
            Weights::new(&self.b, self.layout, self.k, self.n).with_zero_point(self.b_zp.clone()),
        )
        .expect("valid weights");
        let a = Activations::new(&self.a, self.m, self.k, self.a_zp).with_row_stride(self.a_stride);
        let options = Options::new().with_threads(threads).with_isa(isa);
        run_into(self.out, self.m, self.n, self.out_stride, |out| {
            qgemm::gemm_with(&a, &packed, &self.stage, out, &options)
        })
    }

    /// Checks every available ISA (single-threaded, and with 3 threads when M is large
    /// enough to split) against the reference.
    pub fn check(&self, label: &str) {
        let expected = self.expected();
        for &isa in qgemm::available_isas() {
            for threads in [1, 3] {
                if threads > 1 && self.m < 8 {
                    continue;
                }
                let (got, gaps_ok) = self.run(isa, threads);
                if got != expected {
                    panic!(
                        "{label}: {isa} ({threads} threads) differs from the reference for m={} n={} k={} \
                         a_zp={} b_zp={:?} layout={:?} out={:?} stage={:?}\n first mismatch: {}",
                        self.m,
                        self.n,
                        self.k,
                        self.a_zp,
                        self.b_zp,
                        self.layout,
                        self.out,
                        self.stage,
                        first_mismatch(&got, &expected, self.n)
                    );
                }
                assert!(gaps_ok, "{label}: {isa} wrote between output rows");
            }
        }
    }
}

/// Fills a strided output with a sentinel, runs `f` on it, and returns the dense
/// result and whether the gaps still hold the sentinel.
pub fn run_into<F>(out: OutputType, rows: usize, cols: usize, stride: usize, f: F) -> (OutputData, bool)
where
    F: FnOnce(OutputMatrix<'_>) -> qgemm::Result<()>,
{
    let len = if rows == 0 { 0 } else { (rows - 1) * stride + cols };
    let in_gap = |i: usize| i % stride >= cols;
    fn dense<T: Copy>(v: &[T], rows: usize, cols: usize, stride: usize) -> Vec<T> {
        (0..rows).flat_map(|r| v[r * stride..r * stride + cols].to_vec()).collect()
    }
    match out {
        OutputType::I32 => {
            let mut v = vec![0x5a5a_5a5a_i32; len];
            f(OutputMatrix::i32(&mut v, rows, cols).with_row_stride(stride)).expect("valid call");
            let gaps = v.iter().enumerate().all(|(i, &x)| !in_gap(i) || x == 0x5a5a_5a5a);
            (OutputData::I32(dense(&v, rows, cols, stride)), gaps)
        }
        OutputType::U8 => {
            let mut v = vec![0x5a_u8; len];
            f(OutputMatrix::u8(&mut v, rows, cols).with_row_stride(stride)).expect("valid call");
            let gaps = v.iter().enumerate().all(|(i, &x)| !in_gap(i) || x == 0x5a);
            (OutputData::U8(dense(&v, rows, cols, stride)), gaps)
        }
        OutputType::I8 => {
            let mut v = vec![0x5a_i8; len];
            f(OutputMatrix::i8(&mut v, rows, cols).with_row_stride(stride)).expect("valid call");
            let gaps = v.iter().enumerate().all(|(i, &x)| !in_gap(i) || x == 0x5a);
            (OutputData::I8(dense(&v, rows, cols, stride)), gaps)
        }
        OutputType::F32 => {
            let sentinel = f32::from_bits(0x5a5a_5a5a);
            let mut v = vec![sentinel; len];
            f(OutputMatrix::f32(&mut v, rows, cols).with_row_stride(stride)).expect("valid call");
            let gaps = v.iter().enumerate().all(|(i, &x)| !in_gap(i) || x.to_bits() == 0x5a5a_5a5a);
            (OutputData::F32(dense(&v, rows, cols, stride)), gaps)
        }
        other => panic!("no output buffer for {other:?}"),
    }
}

/// Describes the first differing element.
pub fn first_mismatch(got: &OutputData, expected: &OutputData, cols: usize) -> String {
    fn find<T: PartialEq + std::fmt::Debug>(g: &[T], e: &[T], cols: usize) -> String {
        match g.iter().zip(e).position(|(x, y)| x != y) {
            Some(i) => format!("[{}][{}]: got {:?}, expected {:?}", i / cols.max(1), i % cols.max(1), g[i], e[i]),
            None => format!("lengths {} vs {}", g.len(), e.len()),
        }
    }
    match (got, expected) {
        (OutputData::I32(g), OutputData::I32(e)) => find(g, e, cols),
        (OutputData::U8(g), OutputData::U8(e)) => find(g, e, cols),
        (OutputData::I8(g), OutputData::I8(e)) => find(g, e, cols),
        (OutputData::F32(g), OutputData::F32(e)) => {
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
            let (gb, eb) = (bits(g), bits(e));
            match gb.iter().zip(&eb).position(|(x, y)| x != y) {
                Some(i) => format!("[{}][{}]: got {:e}, expected {:e}", i / cols.max(1), i % cols.max(1), g[i], e[i]),
                None => format!("lengths {} vs {}", g.len(), e.len()),
            }
        }
        _ => "different output types".into(),
    }
}

/// A dequantizing stage for f32 output: scales per tensor or per channel across many
/// binades (tiny ones give subnormal results, huge ones overflow to infinity), with an
/// f32 bias or none.
pub fn dequantize_for(rng: &mut Rng, channels: usize, per_channel: bool, with_bias: bool) -> qgemm::Dequantize {
    let scale = |rng: &mut Rng| {
        let exponent = [-150i32, -140, -120, -30, -12, -3, 0, 20, 100][rng.below(9)];
        (1.0 + (rng.next_u64() % 1000) as f32 / 997.0)
            * 2f32.powi(exponent)
            * if rng.below(5) == 0 { -1.0 } else { 1.0 }
    };
    let scale: qgemm::Channelwise<f32> =
        if per_channel { (0..channels).map(|_| scale(rng)).collect::<Vec<f32>>().into() } else { scale(rng).into() };
    let d = qgemm::Dequantize::new(scale);
    if with_bias {
        let bias: Vec<f32> = (0..channels)
            .map(|_| match rng.below(4) {
                0 => 0.0,
                1 => -0.0,
                2 => f32::from_bits(rng.next_u64() as u32 & 0x807f_ffff), // subnormal
                _ => (rng.next_u64() as i32 >> 8) as f32 / 64.0,
            })
            .collect();
        d.with_bias(bias)
    } else {
        d
    }
}

/// The four schemes with the given per-tensor or per-channel parameters.
pub fn schemes(rng: &mut Rng, channels: usize, per_channel: bool, k: usize) -> Vec<Requantization> {
    // Scales that map the accumulator spread (≈ 128·128·√K) onto ±100 or so, with some
    // spread per channel.
    let typical = 100.0 / (128.0 * 128.0 * (k.max(1) as f64).sqrt());
    let reals: Vec<f64> = (0..channels.max(1)).map(|_| typical * (0.25 + rng.below(1000) as f64 / 250.0)).collect();
    let fixed: Vec<(i32, i32)> = reals.iter().map(|&r| qgemm::quantize_multiplier(r).expect("in range")).collect();
    let cw = |mut v: Vec<i32>| {
        if per_channel {
            v.truncate(channels);
            Channelwise::PerChannel(v)
        } else {
            Channelwise::PerTensor(v[0])
        }
    };
    let params =
        FixedPointParams::new(cw(fixed.iter().map(|f| f.0).collect()), cw(fixed.iter().map(|f| f.1).collect()));
    let scales: Vec<f32> = reals.iter().map(|&r| r as f32).collect();
    vec![
        Requantization::FixedPoint(params.clone()),
        Requantization::FixedPointHalfUp(params.clone()),
        Requantization::FixedPointSingleRounding(params),
        Requantization::Float {
            scale: if per_channel {
                Channelwise::PerChannel(scales[..channels].to_vec())
            } else {
                Channelwise::PerTensor(scales[0])
            },
        },
    ]
}

/// A requantization to `out` with a random zero point and a clamp drawn from: the full
/// range, ReLU, ReLU6-like, and min = max.
pub fn requantize_for(rng: &mut Rng, scheme: Requantization, out: OutputType) -> Requantize {
    let (lo, hi) = out.range();
    let zero_point = lo + rng.below(256) as i32;
    let (min, max) = match rng.below(4) {
        0 => (lo, hi),
        1 => (zero_point, hi),
        2 => (zero_point, (zero_point + 40).min(hi)),
        _ => {
            let v = lo + rng.below(256) as i32;
            (v, v)
        }
    };
    Requantize::from_i32(scheme, zero_point, min, max)
}

/// One convolution problem.
#[derive(Clone, Debug)]
pub struct ConvCase {
    pub params: Conv2dParams,
    pub input: Vec<u8>,
    pub input_zp: u8,
    /// OHWI.
    pub weights: Vec<i8>,
    pub weight_zp: Channelwise<i8>,
    pub stage: OutputStage,
    pub out: OutputType,
    pub out_stride: usize,
    /// The layout the weights are handed to the packing in (converted from OHWI).
    pub layout: qgemm::FilterLayout,
}

/// OHWI weights in OIHW order, element by element.
pub fn ohwi_to_oihw(w: &[i8], p: &Conv2dParams) -> Vec<i8> {
    let (kh, kw, cg) = (p.kernel_height, p.kernel_width, p.in_channels / p.groups);
    let mut out = vec![0; w.len()];
    for o in 0..p.out_channels {
        for y in 0..kh {
            for x in 0..kw {
                for c in 0..cg {
                    out[((o * cg + c) * kh + y) * kw + x] = w[((o * kh + y) * kw + x) * cg + c];
                }
            }
        }
    }
    out
}

impl ConvCase {
    /// The same case with 7-bit activations and input zero point (≤ 127), where AVX2
    /// runs its fast path (`6x8c4-avx2-maddubs`), reading the input in place.
    pub fn seven_bit(mut self) -> ConvCase {
        self.input.iter_mut().for_each(|x| *x &= 0x7f);
        self.input_zp &= 0x7f;
        self
    }

    pub fn random(rng: &mut Rng, params: Conv2dParams) -> ConvCase {
        let p = params;
        let input_len = p.batch * p.in_height * p.in_width * p.in_channels;
        let weights_len = p.out_channels * p.kernel_height * p.kernel_width * (p.in_channels / p.groups);
        ConvCase {
            params,
            input: (0..input_len).map(|_| rng.u8()).collect(),
            input_zp: rng.u8(),
            weights: (0..weights_len).map(|_| rng.i8()).collect(),
            // Symmetric weights (the common case, which some kernels read differently),
            // or random zero points per tensor or per channel.
            weight_zp: match rng.below(3) {
                0 => Channelwise::PerTensor(0),
                1 => Channelwise::PerTensor(rng.i8()),
                _ => Channelwise::PerChannel((0..p.out_channels).map(|_| rng.i8()).collect()),
            },
            stage: OutputStage::default(),
            out: OutputType::I32,
            out_stride: p.out_channels,
            layout: qgemm::FilterLayout::Ohwi,
        }
    }

    pub fn expected(&self) -> OutputData {
        let problem = Conv2dProblem {
            params: self.params,
            input: &self.input,
            input_zero_point: self.input_zp,
            weights: &self.weights,
            weight_zero_point: &self.weight_zp,
        };
        reference::conv2d(&problem, &self.stage, self.out)
    }

    pub fn run(&self, isa: Isa, threads: usize) -> (OutputData, bool) {
        self.run_in(isa, threads, &mut qgemm::Workspace::new())
    }

    pub fn packed(&self, isa: Isa) -> PackedConvWeights {
        let p = self.params;
        let oihw;
        let data = match self.layout {
            qgemm::FilterLayout::Ohwi => &self.weights,
            _ => {
                oihw = ohwi_to_oihw(&self.weights, &p);
                &oihw
            }
        };
        PackedConvWeights::for_isa(
            isa,
            ConvWeights::new(data, &p).with_layout(self.layout).with_zero_point(self.weight_zp.clone()),
        )
        .expect("valid conv weights")
    }

    /// Runs in `workspace`, which may hold buffers from earlier calls.
    pub fn run_in(&self, isa: Isa, threads: usize, workspace: &mut qgemm::Workspace) -> (OutputData, bool) {
        let p = self.params;
        let packed = self.packed(isa);
        let rows = p.batch * p.out_height().unwrap() * p.out_width().unwrap();
        let input = ConvInput::new(&self.input, self.input_zp);
        let options = Options::new().with_threads(threads).with_isa(isa);
        run_into(self.out, rows, p.out_channels, self.out_stride, |out| {
            qgemm::conv2d_in(&input, &packed, &p, &self.stage, out, &options, workspace)
        })
    }

    pub fn check(&self, label: &str) {
        let expected = self.expected();
        for &isa in qgemm::available_isas() {
            for threads in [1, 2] {
                let (got, gaps_ok) = self.run(isa, threads);
                if got != expected {
                    panic!(
                        "{label}: conv on {isa} ({threads} threads) differs from the reference: {:?}, out {:?}, \
                         stage {:?}\n first mismatch: {}",
                        self.params,
                        self.out,
                        self.stage,
                        first_mismatch(&got, &expected, self.params.out_channels)
                    );
                }
                assert!(gaps_ok, "{label}: conv on {isa} wrote between output rows");
            }
        }
    }
}

/// The path a convolution case takes: `vnni` where the weights were packed for a VNNI
/// kernel, which reads A in place for any input ([`qgemm::ConvPath::Indirect`] where
/// a case can run indirectly: the VNNI tiers, and AMX's convolutions too shallow for
/// its tiles, which it packs for AVX-512 VNNI), `other` elsewhere.
#[derive(Clone, Copy, Debug)]
pub struct Want {
    pub vnni: qgemm::ConvPath,
    pub other: qgemm::ConvPath,
}

#[allow(dead_code)]
impl Want {
    /// A dense 1×1: indirect on the VNNI tiers, a GEMM over the input elsewhere.
    pub const PW: Want = Want { vnni: qgemm::ConvPath::Indirect, other: qgemm::ConvPath::Pointwise };
    /// A dense 1×1 that cannot run indirectly (a group's channels not a multiple of 4).
    pub const PW_ONLY: Want = Want { vnni: qgemm::ConvPath::Pointwise, other: qgemm::ConvPath::Pointwise };
    /// Indirect on the VNNI tiers, taps gathered elsewhere.
    pub const IN: Want = Want { vnni: qgemm::ConvPath::Indirect, other: qgemm::ConvPath::Im2col };
    /// Taps gathered everywhere.
    pub const IM: Want = Want { vnni: qgemm::ConvPath::Im2col, other: qgemm::ConvPath::Im2col };
    /// The depthwise kernels everywhere.
    pub const DW: Want = Want { vnni: qgemm::ConvPath::Depthwise, other: qgemm::ConvPath::Depthwise };

    /// The path with `weights`, by the kernel they were packed for.
    pub fn on(self, weights: &qgemm::PackedConvWeights) -> qgemm::ConvPath {
        let name = weights.kernel_info().name;
        if name.ends_with("avx512vnni") || name.ends_with("avxvnni") { self.vnni } else { self.other }
    }
}
