//! The fuzz targets' bodies: each decodes its input into a whole problem and checks
//! every ISA this CPU has against the reference byte for byte, or (the `invalid`
//! target) checks that a malformed call fails cleanly.
//!
//! Shared by the cargo-fuzz binaries (`fuzz/fuzz_targets/*.rs`, nightly) and by the
//! stable replay test (`dispatch/tests/fuzz_corpus.rs`), which runs every committed
//! seed in `fuzz/seeds/<target>/`. A panic is a finding.

use arbitrary::Unstructured;
use qgemm::reference::{self, Conv2dProblem, GemmProblem, OutputData};
use qgemm::{
    Activations, Channelwise, Conv2dParams, Conv2dTasks, ConvInput, ConvWeights, Dequantize, ErrorKind, FilterLayout,
    FixedPointParams, GemmTasks, NibbleFormat, NibbleWeights, Options, OutputMatrix, OutputStage, OutputType,
    PackedConvWeights, PackedWeights, Partition, Requantization, Requantize, WeightLayout, Weights,
};

thread_local! {
    /// One workspace for every call on this thread, so that state left in the scratch
    /// by one input (another shape, path or ISA) meets the next.
    static WORKSPACE: std::cell::RefCell<qgemm::Workspace> = std::cell::RefCell::new(qgemm::Workspace::new());
}

fn with_workspace<T>(f: impl FnOnce(&mut qgemm::Workspace) -> T) -> T {
    WORKSPACE.with(|w| f(&mut w.borrow_mut()))
}

/// A target's body.
pub type Target = fn(&[u8]);

/// The targets by name, as the seeds directory and the binaries name them.
pub const TARGETS: [(&str, Target); 6] = [
    ("gemm", gemm),
    ("conv2d", conv2d),
    ("requantize", requantize),
    ("pack", pack),
    ("invalid", invalid),
    ("load", load),
];

/// What output gaps and untouched buffers hold.
const SENTINEL: u8 = 0xa5;

/// The fuzzer's bytes, read as small decisions; zeros once exhausted.
struct Input<'a>(Unstructured<'a>);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        self.0.arbitrary().unwrap_or(0)
    }
    fn below(&mut self, n: usize) -> usize {
        self.0.int_in_range(0..=n.max(1) - 1).unwrap_or(0)
    }
    fn flip(&mut self) -> bool {
        self.byte() & 1 == 1
    }
    /// Bounds from 0 to `len` with up to three cuts anywhere (repeats allowed).
    fn cuts(&mut self, len: usize) -> Vec<usize> {
        let mut cuts: Vec<usize> = (0..self.below(4)).map(|_| self.below(len + 1)).collect();
        cuts.extend([0, len]);
        cuts.sort_unstable();
        cuts
    }
    fn i32(&mut self) -> i32 {
        self.0.arbitrary().unwrap_or(0)
    }
    /// A data byte biased toward the values that break saturating kernels.
    fn data(&mut self) -> u8 {
        match self.byte() {
            0..=15 => 0,
            16..=47 => 255,
            48..=63 => 128,
            64..=79 => 127,
            80..=95 => 129,
            _ => self.byte(),
        }
    }
    /// A size: mostly small, sometimes past a cache block of the kernels.
    fn size(&mut self, small: usize, large: usize) -> usize {
        if self.below(8) == 0 { self.below(large + 1) } else { self.below(small + 1) }
    }
    fn channelwise<T>(&mut self, n: usize, mut f: impl FnMut(&mut Self) -> T) -> Channelwise<T> {
        if self.flip() {
            Channelwise::PerChannel((0..n).map(|_| f(self)).collect())
        } else {
            Channelwise::PerTensor(f(self))
        }
    }
}

/// A valid output stage for `n` columns and output type `out`.
fn stage(inp: &mut Input, n: usize, out: OutputType, bias_bits: u32) -> OutputStage {
    let bias = inp.flip().then(|| (0..n).map(|_| inp.i32() >> (32 - bias_bits.clamp(1, 32))).collect());
    let requantize = (out != OutputType::I32).then(|| {
        let multiplier = |i: &mut Input| if i.below(8) == 0 { 0 } else { (1 << 30) | (i.i32() & 0x3fff_ffff) };
        let shift = |i: &mut Input| i.below(62) as i32 - 31;
        let scheme = match inp.below(4) {
            3 => {
                // Any finite positive f32, with the scales real models use most likely.
                let scale = |i: &mut Input| match i.below(4) {
                    0 => f32::from_bits(1 + (i.i32() as u32 & 0x7f7f_fffe)),
                    _ => f32::from_bits(0x3000_0000 + (i.i32() as u32 & 0x0fff_ffff)),
                };
                Requantization::Float { scale: inp.channelwise(n, scale) }
            }
            kind => {
                let params = FixedPointParams::new(inp.channelwise(n, multiplier), inp.channelwise(n, shift));
                match kind {
                    0 => Requantization::FixedPoint(params),
                    1 => Requantization::FixedPointHalfUp(params),
                    _ => Requantization::FixedPointSingleRounding(params),
                }
            }
        };
        let (lo, _) = out.range();
        let zero_point = lo + i32::from(inp.byte());
        let (x, y) = (lo + i32::from(inp.byte()), lo + i32::from(inp.byte()));
        Requantize::from_i32(scheme, zero_point, x.min(y), x.max(y))
    });
    OutputStage::new(bias, requantize)
}

fn output_type(inp: &mut Input) -> OutputType {
    [OutputType::I32, OutputType::U8, OutputType::I8][inp.below(3)]
}

/// Runs `call` into a `rows × cols` output of `out`'s type with row stride `stride`,
/// the gaps between rows (and the buffer, on error) filled with a sentinel, and
/// returns the dense result, or the error. Panics if a gap was written, or anything
/// was written on error.
fn run_into(
    out: OutputType,
    rows: usize,
    cols: usize,
    stride: usize,
    call: impl FnOnce(OutputMatrix<'_>) -> qgemm::Result<()>,
) -> qgemm::Result<OutputData> {
    let len = if rows == 0 { 0 } else { (rows - 1) * stride + cols };
    let width = match out {
        OutputType::I32 | OutputType::F32 => 4,
        _ => 1,
    };
    let mut bytes = vec![SENTINEL; len * width];
    let result = match out {
        OutputType::U8 => call(OutputMatrix::u8(&mut bytes, rows, cols).with_row_stride(stride)),
        OutputType::I8 => {
            // Through an i8 copy of the bytes, and back.
            let mut v: Vec<i8> = bytes.iter().map(|&b| b as i8).collect();
            let r = call(OutputMatrix::i8(&mut v, rows, cols).with_row_stride(stride));
            bytes = v.iter().map(|&b| b as u8).collect();
            r
        }
        OutputType::I32 => {
            let mut v = vec![i32::from_ne_bytes([SENTINEL; 4]); len];
            let r = call(OutputMatrix::i32(&mut v, rows, cols).with_row_stride(stride));
            bytes = v.iter().flat_map(|x| x.to_ne_bytes()).collect();
            r
        }
        OutputType::F32 => {
            let mut v = vec![f32::from_ne_bytes([SENTINEL; 4]); len];
            let r = call(OutputMatrix::f32(&mut v, rows, cols).with_row_stride(stride));
            bytes = v.iter().flat_map(|x| x.to_ne_bytes()).collect();
            r
        }
        other => panic!("the harness has no output buffer for {other:?}"),
    };
    let in_matrix = |i: usize| (i / width) % stride.max(1) < cols;
    if let Err(e) = result {
        assert!(bytes.iter().all(|&b| b == SENTINEL), "output written by a failing call: {e}");
        return Err(e);
    }
    for (i, &b) in bytes.iter().enumerate() {
        assert!(in_matrix(i) || b == SENTINEL, "byte {i} between rows was written");
    }
    let at = |r: usize, c: usize| (r * stride + c) * width;
    let dense = (0..rows).flat_map(|r| (0..cols).map(move |c| (r, c)));
    Ok(match out {
        OutputType::U8 => OutputData::U8(dense.map(|(r, c)| bytes[at(r, c)]).collect()),
        OutputType::I8 => OutputData::I8(dense.map(|(r, c)| bytes[at(r, c)] as i8).collect()),
        OutputType::I32 => OutputData::I32(
            dense.map(|(r, c)| i32::from_ne_bytes(bytes[at(r, c)..at(r, c) + 4].try_into().unwrap())).collect(),
        ),
        OutputType::F32 => OutputData::F32(
            dense.map(|(r, c)| f32::from_ne_bytes(bytes[at(r, c)..at(r, c) + 4].try_into().unwrap())).collect(),
        ),
        other => panic!("the harness has no output buffer for {other:?}"),
    })
}

/// One GEMM, decoded; checked on every ISA.
struct GemmCase {
    m: usize,
    n: usize,
    k: usize,
    a: Vec<u8>,
    a_stride: usize,
    a_zp: u8,
    b: Vec<i8>,
    layout: WeightLayout,
    b_zp: Channelwise<i8>,
    stage: OutputStage,
    out: OutputType,
    out_stride: usize,
    /// Hand A over as i8 activations (`a − 128`, zero point `a_zp − 128`): the same
    /// differences, so the same expected bytes.
    signed_a: bool,
    /// Hand B over as u8 weights (`b + 128`, zero point `b_zp + 128`), likewise.
    unsigned_b: bool,
    /// B is 4-bit (its values and zero points were cut to the format's range), handed
    /// over two per byte, each row of its layout starting on a byte.
    nibbles: Option<NibbleFormat>,
}

impl GemmCase {
    fn decode(inp: &mut Input, m: usize, n: usize, k: usize, bias_bits: u32) -> GemmCase {
        let a_stride = k + inp.below(3);
        let out_stride = n + inp.below(3);
        let a_zp = inp.data();
        let layout = if inp.flip() { WeightLayout::KxN } else { WeightLayout::NxK };
        let b_zp = inp.channelwise(n, |i| i.data() as i8);
        let out = output_type(inp);
        let stage = stage(inp, n, out, bias_bits);
        // Either every byte from the input, or one extreme value for all of A/B.
        let fill = |len: usize, inp: &mut Input| -> Vec<u8> {
            match inp.below(4) {
                0 => vec![inp.data(); len],
                _ => (0..len).map(|_| inp.data()).collect(),
            }
        };
        let a = fill(if m == 0 { 0 } else { (m - 1) * a_stride + k }, inp);
        let b = fill(k * n, inp).into_iter().map(|x| x as i8).collect();
        GemmCase {
            m,
            n,
            k,
            a,
            a_stride,
            a_zp,
            b,
            layout,
            b_zp,
            stage,
            out,
            out_stride,
            signed_a: false,
            unsigned_b: false,
            nibbles: None,
        }
    }

    /// Decisions read after everything else (so that older seeds keep their meaning):
    /// the same problem handed over as i8 activations and/or u8 weights, and i32
    /// output as f32 (a dequantizing stage with a scale and bias from the input).
    fn decode_encodings(&mut self, inp: &mut Input) {
        let choice = inp.byte();
        self.signed_a = choice & 1 != 0;
        self.unsigned_b = choice & 2 != 0;
        // 4-bit weights: each weight and zero point cut to int4 (its top four bits,
        // sign-extended) or uint4 (its top four bits).
        self.nibbles = match choice >> 3 & 3 {
            1 => Some(NibbleFormat::Int4),
            2 => Some(NibbleFormat::UInt4),
            _ => None,
        };
        if let Some(format) = self.nibbles {
            let cut = |b: i8| if format == NibbleFormat::Int4 { b >> 4 } else { ((b as u8) >> 4) as i8 };
            self.b.iter_mut().for_each(|b| *b = cut(*b));
            self.b_zp = match &self.b_zp {
                Channelwise::PerTensor(z) => Channelwise::PerTensor(cut(*z)),
                Channelwise::PerChannel(v) => Channelwise::PerChannel(v.iter().map(|&z| cut(z)).collect()),
            };
        }
        if choice & 4 != 0 && self.out == OutputType::I32 {
            let any = |i: &mut Input| f32::from_bits(i.i32() as u32 & 0xff7f_ffff); // finite
            let scale = inp.channelwise(self.n, any);
            let mut d = Dequantize::new(scale);
            if inp.flip() {
                d = d.with_bias((0..self.n).map(|_| any(inp)).collect::<Vec<f32>>());
            }
            self.out = OutputType::F32;
            self.stage.dequantize = Some(d);
        }
    }

    /// Checks every ISA at `threads` threads and, given a grid, through its tasks
    /// (run last to first).
    fn check(&self, threads: usize, grid: Option<&Partition>) {
        let GemmCase { m, n, k, layout, out, .. } = *self;
        let problem = GemmProblem {
            m,
            n,
            k,
            a: &self.a,
            a_row_stride: self.a_stride,
            a_zero_point: self.a_zp,
            b: &self.b,
            b_layout: layout,
            b_zero_point: &self.b_zp,
        };
        let expected = reference::gemm(&problem, &self.stage, out);
        let flipped_a: Vec<i8> = self.a.iter().map(|&x| (x ^ 0x80) as i8).collect();
        let flipped_b: Vec<u8> = self.b.iter().map(|&x| x as u8 ^ 0x80).collect();
        let flipped_b_zp: Vec<u8> = self.b_zp.values().iter().map(|&z| z as u8 ^ 0x80).collect();
        let cols = if layout == WeightLayout::KxN { n } else { k };
        // Each row of the layout in ceil(cols / 2) bytes; an odd row's unused nibble set.
        let nibble_bytes: Vec<u8> = self
            .b
            .chunks(cols.max(1))
            .flat_map(|row| row.chunks(2).map(|v| (v[0] as u8 & 15) | v.get(1).map_or(0xf0, |&h| (h as u8 & 15) << 4)))
            .collect();
        for &isa in qgemm::available_isas() {
            let packed = if let Some(format) = self.nibbles {
                let w = NibbleWeights::new(&nibble_bytes, format, layout, k, n).with_zero_point(self.b_zp.clone());
                PackedWeights::for_isa(isa, w)
            } else if self.unsigned_b {
                let zp: Channelwise<u8> = match self.b_zp {
                    Channelwise::PerTensor(_) => Channelwise::PerTensor(flipped_b_zp[0]),
                    _ => Channelwise::PerChannel(flipped_b_zp.clone()),
                };
                PackedWeights::for_isa(isa, Weights::new(&flipped_b, layout, k, n).with_zero_point(zp))
            } else {
                PackedWeights::for_isa(isa, Weights::new(&self.b, layout, k, n).with_zero_point(self.b_zp.clone()))
            }
            .expect("valid weights pack");
            let activations = if self.signed_a {
                Activations::i8(&flipped_a, m, k, (self.a_zp ^ 0x80) as i8)
            } else {
                Activations::new(&self.a, m, k, self.a_zp)
            }
            .with_row_stride(self.a_stride);
            let options = Options::new().with_threads(threads).with_isa(isa);
            let got = run_into(out, m, n, self.out_stride, |c| {
                with_workspace(|w| qgemm::gemm_in(&activations, &packed, &self.stage, c, &options, w))
            })
            .expect("a valid call succeeds");
            assert_eq!(got, expected, "{isa} differs from the reference (m={m} n={n} k={k})");
            let Some(grid) = grid else { continue };
            let got = run_into(out, m, n, self.out_stride, |c| {
                let tasks = GemmTasks::new(&activations, &packed, &self.stage, c, grid)?;
                with_workspace(|w| (0..tasks.len()).rev().try_for_each(|i| tasks.run(i, w)))
            })
            .expect("a valid grid succeeds");
            assert_eq!(got, expected, "{isa} tasks of {grid:?} differ from the reference (m={m} n={n} k={k})");
        }
    }
}

/// A whole GEMM: shapes (tails and, sometimes, several cache blocks), strides, zero
/// points, layout, output type, scheme, clamp, extreme data; every ISA, 1–3 threads.
pub fn gemm(bytes: &[u8]) {
    let mut inp = Input(Unstructured::new(bytes));
    let (m, n, k) = (inp.size(20, 70), inp.size(40, 80), inp.size(80, 1100));
    let threads = 1 + inp.below(3);
    let case = GemmCase::decode(&mut inp, m, n, k, 32);
    // Read last, so that older seeds keep their meaning: sometimes a grid of tasks.
    let grid = inp.flip().then(|| Partition::grid(inp.cuts(m), inp.cuts(n)));
    let mut case = case;
    case.decode_encodings(&mut inp);
    case.check(threads, grid.as_ref());
}

/// The output stage alone: K of 0, 1 or 2 and full-range i32 biases, so that the
/// requantization sees accumulators anywhere in i32, under every scheme and clamp.
pub fn requantize(bytes: &[u8]) {
    let mut inp = Input(Unstructured::new(bytes));
    let (m, n, k) = (inp.size(4, 9), inp.size(40, 70), inp.below(3));
    GemmCase::decode(&mut inp, m, n, k, 32).check(1, None);
}

/// Packing: weight shapes across the panels' tails, both layouts, per-column zero
/// points, checked through a GEMM with i32 output (every column sum and zero-point
/// correction shows there).
pub fn pack(bytes: &[u8]) {
    let mut inp = Input(Unstructured::new(bytes));
    let (m, n, k) = (1 + inp.below(7), inp.size(70, 300), inp.size(70, 600));
    let mut case = GemmCase::decode(&mut inp, m, n, k, 0);
    case.out = OutputType::I32;
    case.stage = OutputStage::default();
    case.check(1, None);
}

/// A convolution: batch, image, channels, groups (including depthwise), kernel,
/// stride, dilation and asymmetric padding; OHWI weights; every ISA. Shapes whose
/// kernel does not fit the padded input must fail with `ConvOutputSize`.
pub fn conv2d(bytes: &[u8]) {
    let mut inp = Input(Unstructured::new(bytes));
    let groups = 1 + inp.below(4);
    let (cg, ocg) = (1 + inp.below(5), 1 + inp.below(5));
    let params = Conv2dParams::new(
        [inp.below(3), 1 + inp.below(9), 1 + inp.below(9), cg * groups],
        ocg * groups,
        [1 + inp.below(5), 1 + inp.below(5)],
    )
    .with_stride(1 + inp.below(3), 1 + inp.below(3))
    .with_dilation(1 + inp.below(3), 1 + inp.below(3))
    .with_padding(inp.below(5), inp.below(5), inp.below(5), inp.below(5))
    .with_groups(groups);
    let p = params;
    let input: Vec<u8> = (0..p.batch * p.in_height * p.in_width * p.in_channels).map(|_| inp.data()).collect();
    let weights: Vec<i8> =
        (0..p.out_channels * p.kernel_height * p.kernel_width * cg).map(|_| inp.data() as i8).collect();
    let input_zp = inp.data();
    let weight_zp = inp.channelwise(p.out_channels, |i| i.data() as i8);
    let out = output_type(&mut inp);
    let stage = stage(&mut inp, p.out_channels, out, 24);
    let out_stride = p.out_channels + inp.below(3);
    let threads = 1 + inp.below(3);
    // The weights handed over in OIHW order, half the time (read last, so that older
    // seeds keep their meaning).
    let oihw = inp.flip();
    let rows = p.batch * p.out_height().unwrap_or(0) * p.out_width().unwrap_or(0);
    let grid = inp.flip().then(|| Partition::grid(inp.cuts(rows), inp.cuts(p.out_channels)));
    let (taps, layout) = (p.kernel_height * p.kernel_width, if oihw { FilterLayout::Oihw } else { FilterLayout::Ohwi });
    let handed: Vec<i8> = if oihw {
        // OIHW[o][c][t] = OHWI[o][t][c].
        (0..weights.len())
            .map(|i| (i / (cg * taps), (i / taps) % cg, i % taps))
            .map(|(o, c, t)| weights[(o * taps + t) * cg + c])
            .collect()
    } else {
        weights.clone()
    };

    let fits = p.out_height().is_some() && p.out_width().is_some();
    let expected = fits.then(|| {
        let problem = Conv2dProblem {
            params,
            input: &input,
            input_zero_point: input_zp,
            weights: &weights,
            weight_zero_point: &weight_zp,
        };
        reference::conv2d(&problem, &stage, out)
    });
    for &isa in qgemm::available_isas() {
        let w = ConvWeights::new(&handed, &p).with_layout(layout).with_zero_point(weight_zp.clone());
        let packed = PackedConvWeights::for_isa(isa, w).expect("valid conv weights pack");
        let options = Options::new().with_threads(threads).with_isa(isa);
        let x = ConvInput::new(&input, input_zp);
        let got = run_into(out, rows, p.out_channels, out_stride, |c| {
            with_workspace(|w| qgemm::conv2d_in(&x, &packed, &params, &stage, c, &options, w))
        });
        match (&expected, got) {
            (Some(expected), Ok(got)) => assert_eq!(&got, expected, "{isa} conv differs from the reference"),
            (None, Err(e)) => assert_eq!(e.kind(), ErrorKind::ConvOutputSize, "{e}"),
            (Some(_), Err(e)) => panic!("{isa}: a valid conv failed: {e}"),
            (None, Ok(_)) => panic!("{isa}: a conv whose kernel does not fit succeeded"),
        }
        let (Some(expected), Some(grid)) = (&expected, &grid) else { continue };
        let got = run_into(out, rows, p.out_channels, out_stride, |c| {
            let tasks = Conv2dTasks::new(&x, &packed, &params, &stage, c, grid)?;
            with_workspace(|w| (0..tasks.len()).rev().try_for_each(|i| tasks.run(i, w)))
        })
        .expect("a valid grid succeeds");
        assert_eq!(&got, expected, "{isa} conv tasks of {grid:?} differ from the reference");
    }
}

/// A valid small GEMM broken in one way the input picks: the call must return `Err`,
/// not panic, and leave the output untouched (checked by `run_into`).
pub fn invalid(bytes: &[u8]) {
    let mut inp = Input(Unstructured::new(bytes));
    let (m, n, k) = (1 + inp.below(6), 1 + inp.below(20), 1 + inp.below(20));
    let b = vec![1i8; k * n];
    let a = vec![3u8; m * k];
    let zp = Channelwise::PerTensor(0i8);
    let packed = PackedWeights::new(Weights::kxn(&b, k, n).with_zero_point(zp.clone())).unwrap();
    let out = if inp.flip() { OutputType::U8 } else { OutputType::I8 };
    let mut stage = stage(&mut inp, n, out, 16);
    let (mut rows, mut cols, mut a_rows, mut a_len, mut a_stride) = (m, n, m, m * k, k);
    let mut out_stride = n;
    let expected = match inp.below(12) {
        0 => {
            a_len -= 1 + inp.below(a_len.min(3));
            ErrorKind::BufferLength
        }
        1 => {
            a_stride = (k - 1).saturating_sub(inp.below(3));
            ErrorKind::Stride
        }
        2 => {
            out_stride = (n - 1).saturating_sub(inp.below(3));
            ErrorKind::Stride
        }
        3 => {
            rows = m + 1 + inp.below(3);
            ErrorKind::Dimension
        }
        4 => {
            // The weights fix N: an output with more columns does not match them.
            cols = n + 1 + inp.below(3);
            ErrorKind::WeightsMismatch
        }
        5 => {
            // Absurd row counts: the size products overflow, or A is far too short.
            a_rows = [isize::MAX as usize, usize::MAX, usize::MAX / 2][inp.below(3)];
            rows = a_rows;
            ErrorKind::Overflow
        }
        6 => {
            let bad = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, -1.0, -f32::MIN_POSITIVE];
            let s = bad[inp.below(bad.len())];
            stage.requantize.as_mut().unwrap().scheme = Requantization::Float { scale: Channelwise::PerTensor(s) };
            ErrorKind::Scale
        }
        7 => {
            let shift = [31, 32, -32, i32::MAX, i32::MIN][inp.below(5)];
            let params = FixedPointParams::new(Channelwise::PerTensor(1 << 30), Channelwise::PerTensor(shift));
            stage.requantize.as_mut().unwrap().scheme = Requantization::FixedPoint(params);
            ErrorKind::Shift
        }
        8 => {
            let multiplier = [1, -1, (1 << 30) - 1, i32::MIN][inp.below(4)];
            let params = FixedPointParams::new(Channelwise::PerTensor(multiplier), Channelwise::PerTensor(0));
            stage.requantize.as_mut().unwrap().scheme = Requantization::FixedPoint(params);
            ErrorKind::Multiplier
        }
        9 => {
            let r = stage.requantize.as_mut().unwrap();
            let (lo, hi) = out.range();
            (r.min, r.max) = (hi, lo);
            ErrorKind::Clamp
        }
        10 => {
            stage.requantize.as_mut().unwrap().zero_point = out.range().1 + 1 + inp.below(1000) as i32;
            ErrorKind::ZeroPoint
        }
        _ => {
            stage.bias = Some(vec![0; n + 1 + inp.below(3)]);
            ErrorKind::BufferLength
        }
    };
    let activations = Activations::new(&a[..a_len], a_rows, k, 0).with_row_stride(a_stride);
    // An absurd row count is declared by A only: the output buffer stays small.
    let out_rows = rows.min(m + 3);
    let result = run_into(out, out_rows, cols, out_stride, |c| qgemm::gemm(&activations, &packed, &stage, c));
    let e = match result {
        Err(e) => e,
        Ok(_) => panic!("an invalid call ({expected:?}) succeeded"),
    };
    let acceptable = match expected {
        ErrorKind::Overflow => matches!(e.kind(), ErrorKind::Overflow | ErrorKind::BufferLength | ErrorKind::Dimension),
        ErrorKind::Stride => matches!(e.kind(), ErrorKind::Stride | ErrorKind::BufferLength),
        kind => e.kind() == kind,
    };
    assert!(acceptable, "expected {expected:?}, got {:?}: {e}", e.kind());
}

/// Loading serialized weights. The first byte picks GEMM (even) or conv (odd) weights,
/// and with bit 1 the checksum is recomputed over the rest after the fuzzer's edits,
/// so that they reach the field checks behind it; the rest is the file. A load either
/// fails cleanly or gives weights that save to bytes which load again to the same
/// bytes, and that compute the same results on every ISA.
pub fn load(bytes: &[u8]) {
    let Some((&mode, file)) = bytes.split_first() else { return };
    let mut file = file.to_vec();
    if mode & 2 != 0 && file.len() >= 4 {
        let body = file.len() - 4;
        let crc = crc32(&file[..body]);
        file[body..].copy_from_slice(&crc.to_le_bytes());
    }
    let clean = |e: qgemm::Error| {
        let allowed = [ErrorKind::Format, ErrorKind::Dimension, ErrorKind::Overflow, ErrorKind::OutOfMemory];
        assert!(allowed.contains(&e.kind()), "loading failed with an unexpected kind: {e}");
    };
    let isas = qgemm::available_isas();
    if mode & 1 == 0 {
        let Ok(w) = PackedWeights::from_bytes(&file).map_err(clean) else { return };
        let saved = w.to_bytes();
        let again = PackedWeights::from_bytes(&saved).expect("saved weights load");
        assert_eq!(again.to_bytes(), saved, "weights saved twice differ");
        let (m, k, n) = (3, w.k(), w.n());
        if k.saturating_mul(n) > 1 << 16 {
            return;
        }
        let a: Vec<u8> = (0..m * k).map(|i| (i * 73 % 256) as u8).collect();
        let results: Vec<Vec<i32>> = isas
            .iter()
            .map(|&isa| {
                let w = PackedWeights::from_bytes_for(isa, &saved).expect("saved weights load on every ISA");
                let mut c = vec![0i32; m * n];
                let options = Options::new().with_isa(isa);
                let stage = OutputStage::i32();
                qgemm::gemm_with(
                    &Activations::new(&a, m, k, 131),
                    &w,
                    &stage,
                    OutputMatrix::i32(&mut c, m, n),
                    &options,
                )
                .expect("a GEMM with loaded weights");
                c
            })
            .collect();
        assert!(results.windows(2).all(|r| r[0] == r[1]), "ISAs differ on loaded weights");
    } else {
        let Ok(w) = PackedConvWeights::from_bytes(&file).map_err(clean) else { return };
        let saved = w.to_bytes();
        let again = PackedConvWeights::from_bytes(&saved).expect("saved conv weights load");
        assert_eq!(again.to_bytes(), saved, "conv weights saved twice differ");
        let [kh, kw] = w.kernel_size();
        let (c, oc) = (w.in_channels(), w.out_channels());
        if kh.saturating_mul(kw).saturating_mul(c).saturating_mul(oc) > 1 << 14 || kh > 64 || kw > 64 {
            return;
        }
        let params =
            Conv2dParams::new([1, kh + 1, kw + 2, c], oc, [kh, kw]).with_padding(0, 1, 0, 0).with_groups(w.groups());
        let input: Vec<u8> = (0..(kh + 1) * (kw + 2) * c).map(|i| (i * 29 % 256) as u8).collect();
        let rows = params.out_height().unwrap() * params.out_width().unwrap();
        let results: Vec<Vec<i32>> = isas
            .iter()
            .map(|&isa| {
                let w = PackedConvWeights::from_bytes_for(isa, &saved).expect("saved conv weights load on every ISA");
                let mut out = vec![0i32; rows * oc];
                let options = Options::new().with_isa(isa);
                let stage = OutputStage::i32();
                qgemm::conv2d_with(
                    &ConvInput::new(&input, 7),
                    &w,
                    &params,
                    &stage,
                    OutputMatrix::i32(&mut out, rows, oc),
                    &options,
                )
                .expect("a convolution with loaded weights");
                out
            })
            .collect();
        assert!(results.windows(2).all(|r| r[0] == r[1]), "ISAs differ on loaded conv weights");
    }
}

/// CRC-32 (IEEE), bit by bit.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}
