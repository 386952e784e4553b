//! The throughput study's suite, shared by the `qgemm-bench` binary and `cargo bench`:
//! the shapes, the data, the problems (inputs, weights, output stage), one timed run,
//! and the reference result each run is checked against.

pub mod cutover;
pub mod export;
pub mod peak;
pub mod report;
pub mod rust_peers;
pub mod spec;

pub use spec::{CONV_SPEC_SYNTAX, conv_spec, parse_conv_spec};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use qgemm::reference::{self, Conv2dProblem, GemmProblem, OutputData};
use qgemm::{
    Activations, Channelwise, Conv2dParams, ConvInput, ConvWeights, Isa, NibbleConvWeights, NibbleFormat,
    NibbleWeights, Options, OutputMatrix, OutputStage, OutputType, PackedConvWeights, PackedWeights, Requantization,
    Requantize, WeightLayout, Weights,
};

/// One shape of the suite.
#[derive(Clone, Debug, PartialEq)]
pub enum Shape {
    /// `C[m×n] = A[m×k] · B[k×n]`.
    Gemm {
        /// Rows.
        m: usize,
        /// Depth.
        k: usize,
        /// Columns.
        n: usize,
    },
    /// An NHWC convolution.
    Conv {
        /// Its label: its name in the suite (`r50_3x3`), or for a convolution given as
        /// a spec, its canonical spec (`1x56x56x128/128/3x3/s2/p1`, see [`conv_spec`]).
        name: String,
        /// Its shape.
        params: Conv2dParams,
    },
}

impl Shape {
    /// `gemm` or `conv`.
    pub fn op(&self) -> &'static str {
        match self {
            Shape::Gemm { .. } => "gemm",
            Shape::Conv { .. } => "conv",
        }
    }

    /// `MxKxN` for GEMM, the name or canonical spec for conv. Exports, peer results and
    /// reports key their rows by it, and [`spec`](Self::spec) makes it parse back.
    pub fn label(&self) -> String {
        match self {
            Shape::Gemm { m, k, n } => format!("{m}x{k}x{n}"),
            Shape::Conv { name, .. } => name.clone(),
        }
    }

    /// `op:label`, which [`parse_shapes`] reads back as this shape.
    pub fn spec(&self) -> String {
        format!("{}:{}", self.op(), self.label())
    }

    /// Operations: 2·M·N·K for GEMM, 2·output pixels·OC·KH·KW·C/groups for conv.
    pub fn ops(&self) -> u64 {
        match self {
            Shape::Gemm { m, k, n } => 2 * (*m as u64) * (*k as u64) * (*n as u64),
            Shape::Conv { params: p, .. } => {
                let pixels = p.batch * p.out_height().unwrap_or(0) * p.out_width().unwrap_or(0);
                2 * (pixels * p.out_channels * p.kernel_height * p.kernel_width * p.in_channels_per_group()) as u64
            }
        }
    }
}

/// The named convolutions of the suite: name and spec (see [`spec`]). ResNet-50's
/// stem, 3×3 and 1×1 layers, stride 2 (downsampling) and a batch of 4; MobileNetV2's
/// 1×1 and depthwise 3×3 layers, stride 1 and 2; EfficientNet's depthwise 5×5.
pub const CONV_SUITE: [(&str, &str); 11] = [
    ("conv1", "1x224x224x3/64/7x7/s2/p3"),
    ("r50_3x3", "1x56x56x64/64/3x3/p1"),
    ("r50_3x3_s2", "1x56x56x128/128/3x3/s2/p1"),
    ("r50_3x3_b4", "4x28x28x128/128/3x3/p1"),
    ("r50_1x1", "1x56x56x64/256/1x1"),
    ("r50_1x1_s2", "1x56x56x256/512/1x1/s2"),
    ("r50_late3x3", "1x14x14x256/256/3x3/p1"),
    ("mbv2_1x1", "1x56x56x24/144/1x1"),
    ("mbv2_dw", "1x56x56x144/144/3x3/p1/g144"),
    ("mbv2_dw_s2", "1x112x112x96/96/3x3/s2/p1/g96"),
    ("effnet_dw5", "1x28x28x240/240/5x5/p2/g240"),
];

/// The named convolutions of the suite, in [`CONV_SUITE`]'s order.
pub fn conv_shapes() -> Vec<Shape> {
    CONV_SUITE
        .iter()
        .map(|&(name, spec)| Shape::Conv {
            name: name.to_string(),
            params: parse_conv_spec(spec).unwrap_or_else(|e| panic!("the suite's {name}: {e}")),
        })
        .collect()
}

/// The default suite: eight GEMMs, then the named convolutions ([`CONV_SUITE`]).
pub fn default_suite() -> Vec<Shape> {
    let gemm = |m, k, n| Shape::Gemm { m, k, n };
    let mut suite = vec![
        gemm(256, 256, 256),
        gemm(1024, 1024, 1024),
        gemm(2048, 2048, 2048),
        gemm(128, 768, 768),
        gemm(128, 768, 3072),
        gemm(128, 3072, 768),
        gemm(16, 1024, 1024),
        gemm(1, 4096, 4096),
    ];
    suite.extend(conv_shapes());
    suite
}

/// Parses a comma-separated list of shapes: `gemm:MxKxN`, `conv:NAME` (a name of
/// [`CONV_SUITE`]) or `conv:SPEC` (any convolution, [`CONV_SPEC_SYNTAX`], see [`spec`]).
/// A convolution given as a spec is labelled with its canonical spec. The error names
/// the item and what is wrong with it.
pub fn parse_shapes(list: &str) -> Result<Vec<Shape>, String> {
    list.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|item| {
            let item = item.trim();
            if let Some(dims) = item.strip_prefix("gemm:") {
                let d: Vec<usize> = dims
                    .split('x')
                    .map(|v| v.parse().map_err(|_| format!("{item}: {v:?} is not a size")))
                    .collect::<Result<_, _>>()?;
                match d[..] {
                    [m, k, n] if m > 0 && k > 0 && n > 0 => Ok(Shape::Gemm { m, k, n }),
                    _ => Err(format!("{item}: expected gemm:MxKxN with positive sizes")),
                }
            } else if let Some(spec) = item.strip_prefix("conv:") {
                if spec.starts_with(|c: char| c.is_ascii_digit()) {
                    let params = parse_conv_spec(spec).map_err(|e| format!("{item}: {e}"))?;
                    Ok(Shape::Conv { name: conv_spec(&params), params })
                } else {
                    conv_shapes().into_iter().find(|s| s.label() == spec).ok_or_else(|| {
                        let names: Vec<&str> = CONV_SUITE.iter().map(|&(name, _)| name).collect();
                        format!("{item}: unknown conv; known: {}; or conv:{CONV_SPEC_SYNTAX}", names.join(", "))
                    })
                }
            } else {
                Err(format!("{item}: expected gemm:MxKxN, conv:NAME or conv:{CONV_SPEC_SYNTAX}"))
            }
        })
        .collect()
}

/// What the activations hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataKind {
    /// Activations and weights uniform over their whole range.
    Full,
    /// Activations in 0..=127 (PyTorch's reduce_range), weights full range.
    SevenBit,
}

impl DataKind {
    /// `full` or `7bit`.
    pub fn name(self) -> &'static str {
        match self {
            DataKind::Full => "full",
            DataKind::SevenBit => "7bit",
        }
    }

    /// Parses `full` or `7bit`.
    pub fn parse(s: &str) -> Result<DataKind, String> {
        match s {
            "full" => Ok(DataKind::Full),
            "7bit" => Ok(DataKind::SevenBit),
            _ => Err(format!("--data {s}: expected full or 7bit")),
        }
    }
}

/// The weights' element type: i8, or 4-bit kept two per byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightBits {
    /// i8, zero point 0.
    I8,
    /// int4 in [−8, 7], zero point 0.
    I4,
    /// uint4 in [0, 15], zero point 8 (as ONNX Runtime's `MatMulNBits` defaults to).
    U4,
}

impl WeightBits {
    /// `i8`, `i4` or `u4`.
    pub fn name(self) -> &'static str {
        match self {
            WeightBits::I8 => "i8",
            WeightBits::I4 => "i4",
            WeightBits::U4 => "u4",
        }
    }

    /// Parses a comma-separated list of `i8`, `i4`, `u4`.
    pub fn parse_list(list: &str) -> Result<Vec<WeightBits>, String> {
        list.split(',')
            .map(|w| match w.trim() {
                "i8" => Ok(WeightBits::I8),
                "i4" => Ok(WeightBits::I4),
                "u4" => Ok(WeightBits::U4),
                other => Err(format!("--weights {other}: expected i8, i4 or u4")),
            })
            .collect()
    }

    fn format(self) -> Option<NibbleFormat> {
        match self {
            WeightBits::I8 => None,
            WeightBits::I4 => Some(NibbleFormat::Int4),
            WeightBits::U4 => Some(NibbleFormat::UInt4),
        }
    }
}

/// One problem of the suite with its data: u8 output, per-channel i32 bias, and
/// per-tensor Float requantization (what ONNX Runtime and PyTorch users run), with a
/// scale that spreads the outputs over the u8 range.
#[derive(Debug)]
pub struct Problem {
    /// The shape.
    pub shape: Shape,
    /// The data kind.
    pub data: DataKind,
    /// The weights' element type.
    pub bits: WeightBits,
    a: Vec<u8>,
    a_zp: u8,
    /// GEMM: N×K; conv: OHWI (4-bit weights: their values, unpacked).
    b: Vec<i8>,
    /// 4-bit weights as stored: each row of K values (a GEMM column, a conv output
    /// channel) in `ceil(K / 2)` bytes, the lower index in the low nibble.
    nibbles: Vec<u8>,
    b_zp: Channelwise<i8>,
    stage: OutputStage,
}

/// A problem's weights, packed for one ISA.
#[derive(Debug)]
pub enum Packed {
    /// GEMM weights.
    Gemm(PackedWeights),
    /// Conv weights.
    Conv(PackedConvWeights),
}

impl Packed {
    /// The microkernel the weights were packed for (a tier may pick a tile per N).
    pub fn kernel_info(&self) -> qgemm::KernelInfo {
        match self {
            Packed::Gemm(p) => p.kernel_info(),
            Packed::Conv(p) => p.kernel_info(),
        }
    }
}

impl Problem {
    /// Generates the problem's data, deterministically from `seed`.
    pub fn new(shape: Shape, data: DataKind, seed: u64) -> Problem {
        Problem::with_weights(shape, data, WeightBits::I8, seed)
    }

    /// A problem with weights of `bits`, deterministically from `seed`.
    pub fn with_weights(shape: Shape, data: DataKind, bits: WeightBits, seed: u64) -> Problem {
        let mut rng = StdRng::seed_from_u64(seed);
        let (a_len, b_len, k, n) = match &shape {
            Shape::Gemm { m, k, n } => (m * k, k * n, *k, *n),
            Shape::Conv { params: p, .. } => {
                let k = p.kernel_height * p.kernel_width * p.in_channels_per_group();
                (p.batch * p.in_height * p.in_width * p.in_channels, p.out_channels * k, k, p.out_channels)
            }
        };
        let a_max = match data {
            DataKind::Full => 255u8,
            DataKind::SevenBit => 127,
        };
        let a: Vec<u8> = (0..a_len).map(|_| rng.random_range(0..=a_max)).collect();
        let (b, b_zp, w_spread): (Vec<i8>, i8, f64) = match bits {
            WeightBits::I8 => ((0..b_len).map(|_| rng.random()).collect(), 0, 74.0),
            WeightBits::I4 => ((0..b_len).map(|_| rng.random_range(-8..=7)).collect(), 0, 4.6),
            WeightBits::U4 => ((0..b_len).map(|_| rng.random_range(0..=15)).collect(), 8, 4.6),
        };
        let nibbles = if bits == WeightBits::I8 {
            Vec::new()
        } else {
            b.chunks_exact(k.max(1))
                .flat_map(|row| row.chunks(2).map(|p| (p[0] as u8 & 15) | p.get(1).map_or(0, |&h| (h as u8 & 15) << 4)))
                .collect()
        };
        let a_zp = a_max / 2 + 1;
        // Accumulators spread as ≈ 74·(a range / 255)·(the weights' spread)·√K; aim
        // for ±64 output levels.
        let spread = 74.0 * (f64::from(a_max) / 255.0) * w_spread * (k.max(1) as f64).sqrt();
        let scale = (64.0 / spread) as f32;
        let stage = OutputStage::new(
            Some((0..n).map(|_| rng.random_range(-(1 << 16)..(1 << 16))).collect()),
            Some(Requantize::from_i32(Requantization::Float { scale: Channelwise::PerTensor(scale) }, 128, 0, 255)),
        );
        Problem { shape, data, bits, a, a_zp, b, nibbles, b_zp: Channelwise::PerTensor(b_zp), stage }
    }

    /// Output elements.
    pub fn output_len(&self) -> usize {
        let (rows, cols) = self.output_dims();
        rows * cols
    }

    /// Packs the weights for `isa`.
    pub fn pack(&self, isa: Isa) -> qgemm::Result<Packed> {
        let zp = self.b_zp.clone();
        match (&self.shape, self.bits.format()) {
            (Shape::Gemm { k, n, .. }, None) => {
                PackedWeights::for_isa(isa, Weights::nxk(&self.b, *n, *k).with_zero_point(zp)).map(Packed::Gemm)
            }
            (Shape::Gemm { k, n, .. }, Some(format)) => {
                let w = NibbleWeights::new(&self.nibbles, format, WeightLayout::NxK, *k, *n).with_zero_point(zp);
                PackedWeights::for_isa(isa, w).map(Packed::Gemm)
            }
            (Shape::Conv { params: p, .. }, None) => {
                PackedConvWeights::for_isa(isa, ConvWeights::new(&self.b, p).with_zero_point(zp)).map(Packed::Conv)
            }
            (Shape::Conv { params: p, .. }, Some(format)) => {
                let w = NibbleConvWeights::new(&self.nibbles, format, p).with_zero_point(zp);
                PackedConvWeights::for_isa(isa, w).map(Packed::Conv)
            }
        }
    }

    /// How qgemm computes a convolution problem (`None` for a GEMM).
    pub fn conv_path(&self, packed: &Packed) -> Option<qgemm::ConvPath> {
        match (&self.shape, packed) {
            (Shape::Conv { params, .. }, Packed::Conv(w)) => w.path(params).ok(),
            _ => None,
        }
    }

    /// One run into `out` (`output_len()` bytes), in `workspace`.
    pub fn run(
        &self,
        packed: &Packed,
        threads: usize,
        out: &mut [u8],
        workspace: &mut qgemm::Workspace,
    ) -> qgemm::Result<()> {
        let (rows, cols) = self.output_dims();
        let c = OutputMatrix::u8(out, rows, cols);
        let options = Options::new().with_threads(threads);
        match (&self.shape, packed) {
            (Shape::Gemm { m, k, .. }, Packed::Gemm(w)) => {
                qgemm::gemm_in(&Activations::new(&self.a, *m, *k, self.a_zp), w, &self.stage, c, &options, workspace)
            }
            (Shape::Conv { params, .. }, Packed::Conv(w)) => {
                let input = ConvInput::new(&self.a, self.a_zp);
                qgemm::conv2d_in(&input, w, params, &self.stage, c, &options, workspace)
            }
            _ => panic!("weights packed for another kind of problem"),
        }
    }

    /// The reference result.
    pub fn reference(&self) -> Vec<u8> {
        let acc = self.reference_accumulators(self.a_zp);
        expect_u8(reference::apply_output_stage(&acc, self.output_dims().1, &self.stage, OutputType::U8))
    }

    /// The reference's raw i32 accumulators (no bias, no requantization), with the
    /// activation zero point taken as `a_zero_point`.
    pub fn reference_i32(&self, a_zero_point: u8) -> Vec<i32> {
        self.reference_accumulators(a_zero_point)
    }

    /// The reference results of the variants that peers compute: the suite's own
    /// (bias, then requantization), the same without bias, and the raw accumulators.
    pub fn reference_variants(&self) -> ReferenceVariants {
        let acc = self.reference_accumulators(self.a_zp);
        let n = self.output_dims().1;
        let unbiased = OutputStage::new(None, self.stage.requantize.clone());
        ReferenceVariants {
            u8_bias: expect_u8(reference::apply_output_stage(&acc, n, &self.stage, OutputType::U8)),
            u8: expect_u8(reference::apply_output_stage(&acc, n, &unbiased, OutputType::U8)),
            i32: acc,
        }
    }

    fn reference_accumulators(&self, a_zero_point: u8) -> Vec<i32> {
        match &self.shape {
            Shape::Gemm { m, k, n } => reference::gemm_accumulators(&GemmProblem {
                m: *m,
                n: *n,
                k: *k,
                a: &self.a,
                a_row_stride: *k,
                a_zero_point,
                b: &self.b,
                b_layout: WeightLayout::NxK,
                b_zero_point: &self.b_zp,
            }),
            Shape::Conv { params, .. } => reference::conv2d_accumulators(&Conv2dProblem {
                params: *params,
                input: &self.a,
                input_zero_point: a_zero_point,
                weights: &self.b,
                weight_zero_point: &self.b_zp,
            }),
        }
    }

    /// The activations: GEMM M×K row-major, conv NHWC.
    pub fn activations(&self) -> &[u8] {
        &self.a
    }

    /// The activation zero point.
    pub fn activation_zero_point(&self) -> u8 {
        self.a_zp
    }

    /// The weights: GEMM N×K row-major, conv OHWI.
    pub fn weights(&self) -> &[i8] {
        &self.b
    }

    /// The weight zero point (the suite's is per tensor).
    pub fn weight_zero_point(&self) -> i8 {
        self.b_zp.at(0)
    }

    /// 4-bit weights as stored (empty for i8): each row of K values (GEMM N×K, conv
    /// OHWI) in `ceil(K / 2)` bytes, the lower index in the low nibble.
    pub fn nibble_weights(&self) -> &[u8] {
        &self.nibbles
    }

    /// The per-column i32 bias.
    pub fn bias(&self) -> &[i32] {
        self.stage.bias.as_deref().unwrap_or(&[])
    }

    /// The requantization: the Float scale, the output zero point, the clamp.
    pub fn requantize(&self) -> (f32, i32, i32, i32) {
        let r = self.stage.requantize.as_ref().expect("the suite requantizes");
        match &r.scheme {
            Requantization::Float { scale: Channelwise::PerTensor(scale) } => (*scale, r.zero_point, r.min, r.max),
            other => panic!("the suite uses a per-tensor Float scale, not {other:?}"),
        }
    }

    /// Output rows (M, or batch·OH·OW) and columns (N, or OC).
    pub fn output_dims(&self) -> (usize, usize) {
        match &self.shape {
            Shape::Gemm { m, n, .. } => (*m, *n),
            Shape::Conv { params: p, .. } => {
                (p.batch * p.out_height().expect("suite shapes fit") * p.out_width().expect("fit"), p.out_channels)
            }
        }
    }
}

/// The reference results of one problem in the forms peers produce.
#[derive(Debug)]
pub struct ReferenceVariants {
    /// Bias, Float requantization, u8: what qgemm computes in the suite.
    pub u8_bias: Vec<u8>,
    /// Float requantization, u8, no bias (peers without an i32 bias input).
    pub u8: Vec<u8>,
    /// The raw accumulators.
    pub i32: Vec<i32>,
}

fn expect_u8(result: OutputData) -> Vec<u8> {
    match result {
        OutputData::U8(v) => v,
        other => panic!("the suite's output is u8, got {:?}", other.output_type()),
    }
}

/// The median of some timings.
pub fn median(times: &mut [f64]) -> f64 {
    times.sort_by(f64::total_cmp);
    let n = times.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 { times[n / 2] } else { (times[n / 2 - 1] + times[n / 2]) / 2.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_shapes() {
        let s = parse_shapes("gemm:1x2x3, conv:r50_1x1,conv:1x56x56x128/128/3x3/s2/p1").unwrap();
        assert_eq!(s[0], Shape::Gemm { m: 1, k: 2, n: 3 });
        assert_eq!(s[1].label(), "r50_1x1");
        let p = Conv2dParams::new([1, 56, 56, 128], 128, [3, 3]).with_stride(2, 2).with_padding(1, 1, 1, 1);
        assert_eq!(s[2], Shape::Conv { name: "1x56x56x128/128/3x3/s2/p1".into(), params: p });
        let dw = parse_shapes("conv:1x112x112x96/96/3x3/s2/p1/g96").unwrap();
        assert_eq!(dw[0], named("mbv2_dw_s2").with_label("1x112x112x96/96/3x3/s2/p1/g96"));
        assert!(parse_shapes("gemm:1x2").is_err());
        assert!(parse_shapes("matmul:1x1x1").is_err());
    }

    impl Shape {
        fn with_label(self, label: &str) -> Shape {
            match self {
                Shape::Conv { params, .. } => Shape::Conv { name: label.into(), params },
                gemm => gemm,
            }
        }
    }

    fn named(name: &str) -> Shape {
        conv_shapes().into_iter().find(|s| s.label() == name).unwrap()
    }

    #[test]
    fn errors_name_the_item() {
        let cases = [
            ("gemm:1x2", "gemm:1x2: expected gemm:MxKxN with positive sizes"),
            ("conv:nope", "conv:nope: unknown conv; known: conv1, r50_3x3, r50_3x3_s2,"),
            ("conv:nope", "; or conv:NxHxWxC/OC/KHxKW[/sS][/pP][/dD][/gG]"),
            ("matmul:1x1x1", "matmul:1x1x1: expected gemm:MxKxN, conv:NAME or conv:NxHxWxC/OC/KHxKW"),
            ("gemm:1x1x1, conv:1x5x5x4/4/3x3/q1 ", "conv:1x5x5x4/4/3x3/q1: unknown option \"q1\""),
            ("conv:1x5x5x4/4", "conv:1x5x5x4/4: missing the kernel size"),
            ("conv:1x5x5x4/4/3x3/g3", "conv:1x5x5x4/4/3x3/g3: 4 input channels do not split into 3 groups"),
            ("conv:1x5x5x4/4/8x8/p1", "conv:1x5x5x4/4/8x8/p1: the kernel's height spans 8"),
        ];
        for (list, message) in cases {
            match parse_shapes(list) {
                Ok(s) => panic!("{list} parsed as {s:?}"),
                Err(e) => assert!(e.contains(message), "{list}: got {e:?}, expected {message:?} in it"),
            }
        }
    }

    #[test]
    fn labels_parse_back_as_the_same_shape() {
        let parsed = parse_shapes(
            "conv:1x20x20x16/16/3x3/s2/p1x0x1x2/g4,conv:1x9x9x8/8/3x3/g8/d2x1/p1x1x1x1/s1x2,\
             conv:2x7x5x6/4/1x3/s2x1/p0x1x0x1,conv:1x56x56x128/128/3x3/s2/p1",
        )
        .unwrap();
        assert_eq!(parsed[0].label(), "1x20x20x16/16/3x3/s2/p1x0x1x2/g4");
        assert_eq!(parsed[1].label(), "1x9x9x8/8/3x3/s1x2/p1/d2x1/g8", "the canonical spec");
        let suite = default_suite();
        assert_eq!(suite.len(), 8 + CONV_SUITE.len());
        for shape in suite.iter().chain(&parsed) {
            assert_eq!(parse_shapes(&shape.spec()), Ok(vec![shape.clone()]), "{}", shape.spec());
        }
        let labels: std::collections::HashSet<String> = suite.iter().map(Shape::label).collect();
        assert_eq!(labels.len(), suite.len(), "the suite's labels are distinct");
    }

    #[test]
    fn the_suite_names_its_convolutions_by_their_specs() {
        for (shape, (name, spec)) in conv_shapes().iter().zip(CONV_SUITE) {
            let Shape::Conv { params, .. } = shape else { panic!("{name} is a conv") };
            assert_eq!(shape.label(), name);
            assert_eq!(conv_spec(params), spec, "{name}'s spec is canonical");
        }
        let Shape::Conv { params: s2, .. } = named("r50_3x3_s2") else { unreachable!() };
        assert_eq!((s2.out_height(), s2.out_width(), s2.stride_height), (Some(28), Some(28), 2));
        assert_eq!(named("r50_3x3_b4").ops(), 2 * 4 * 28 * 28 * 128 * 128 * 9);
        assert_eq!(named("effnet_dw5").ops(), 2 * 28 * 28 * 240 * 25);
        assert_eq!(named("mbv2_dw_s2").ops(), 2 * 56 * 56 * 96 * 9);
        assert_eq!(named("r50_1x1_s2").ops(), 2 * 28 * 28 * 512 * 256);
    }

    #[test]
    fn op_counts() {
        assert_eq!(Shape::Gemm { m: 2, k: 3, n: 4 }.ops(), 48);
        let dw = conv_shapes().into_iter().find(|s| s.label() == "mbv2_dw").unwrap();
        assert_eq!(dw.ops(), 2 * 56 * 56 * 144 * 9);
        let conv1 = conv_shapes().into_iter().next().unwrap();
        assert_eq!(conv1.ops(), 2 * 112 * 112 * 64 * 7 * 7 * 3);
    }

    #[test]
    fn a_small_problem_is_exact_on_every_isa() {
        let shapes = "gemm:7x33x65,conv:1x20x20x16/16/3x3/s2/p1x0x1x2/g4,conv:2x9x7x8/12/3x2/s1x2/p0x2x1x0/d2x1";
        for shape in parse_shapes(shapes).unwrap() {
            for (data, bits) in [
                (DataKind::Full, WeightBits::I8),
                (DataKind::SevenBit, WeightBits::I8),
                (DataKind::Full, WeightBits::I4),
                (DataKind::Full, WeightBits::U4),
            ] {
                let p = Problem::with_weights(shape.clone(), data, bits, 1);
                let expected = p.reference();
                for &isa in qgemm::available_isas() {
                    let mut out = vec![0u8; p.output_len()];
                    p.run(&p.pack(isa).unwrap(), 2, &mut out, &mut qgemm::Workspace::new()).unwrap();
                    assert_eq!(out, expected, "{} {bits:?} on {isa}", shape.label());
                }
            }
        }
    }

    #[test]
    fn export_writes_what_the_manifest_says() {
        let dir = std::env::temp_dir().join(format!("qgemm-export-test-{}", std::process::id()));
        let problems: Vec<Problem> = parse_shapes("gemm:3x5x7,conv:mbv2_1x1,conv:1x6x5x4/6/3x3/s2x1/p1x0x2x1/d1x2/g2")
            .unwrap()
            .into_iter()
            .enumerate()
            .map(|(i, s)| Problem::new(s, DataKind::SevenBit, i as u64))
            .collect();
        export::export(&dir, &problems, |_, _| {}).unwrap();
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(manifest["data"], "7bit");
        let read = |v: &serde_json::Value| std::fs::read(dir.join(v.as_str().unwrap())).unwrap();
        for (entry, problem) in manifest["problems"].as_array().unwrap().iter().zip(&problems) {
            assert_eq!(entry["shape"], problem.shape.label().as_str());
            assert_eq!(entry["ops"], problem.shape.ops());
            if let Shape::Conv { params: p, .. } = &problem.shape {
                let pair = |a: usize, b: usize| serde_json::json!([a, b]);
                assert_eq!(entry["stride"], pair(p.stride_height, p.stride_width));
                assert_eq!(entry["dilation"], pair(p.dilation_height, p.dilation_width));
                assert_eq!(entry["padding"], serde_json::json!([p.pad_top, p.pad_left, p.pad_bottom, p.pad_right]));
                assert_eq!(entry["groups"], p.groups);
                assert_eq!(entry["out_height"], p.out_height().unwrap());
            }
            assert_eq!(read(&entry["a"]), problem.activations());
            assert_eq!(read(&entry["b"]), problem.weights().iter().map(|&w| w as u8).collect::<Vec<_>>());
            assert_eq!(entry["a_zero_point"], problem.activation_zero_point());
            let scale = entry["a_scale"].as_f64().unwrap() as f32;
            assert_eq!(scale, problem.requantize().0, "the scale reads back as the same f32");
            assert_eq!(read(&entry["expected"]["u8_bias"]), problem.reference());
            let i32s: Vec<i32> = read(&entry["expected"]["i32"])
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            assert_eq!(i32s, problem.reference_i32(problem.activation_zero_point()));
            assert_eq!(read(&entry["expected"]["u8"]).len(), problem.output_len());
        }
        let conv = &manifest["problems"][2];
        assert_eq!(conv["shape"], "1x6x5x4/6/3x3/s2x1/p1x0x2x1/d1x2/g2");
        assert_eq!(conv["a"], "conv_1x6x5x4_6_3x3_s2x1_p1x0x2x1_d1x2_g2.a.u8", "no '/' in file names");
        assert_eq!(conv["padding"], serde_json::json!([1, 0, 2, 1]));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn median_of_even_and_odd_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
