//! The throughput study's suite, shared by the `qgemm-bench` binary and `cargo bench`:
//! the shapes, the data, the problems (inputs, weights, output stage), one timed run,
//! and the reference result each run is checked against.

pub mod export;
pub mod peak;
pub mod report;
pub mod rust_peers;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use qgemm::reference::{self, Conv2dProblem, GemmProblem, OutputData};
use qgemm::{
    Activations, Channelwise, Conv2dParams, ConvInput, ConvWeights, Isa, Options, OutputMatrix, OutputStage,
    OutputType, PackedConvWeights, PackedWeights, Requantization, Requantize, WeightLayout, Weights,
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
    /// A named NHWC convolution.
    Conv {
        /// Its name in the suite.
        name: &'static str,
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

    /// `MxKxN` for GEMM, the name for conv.
    pub fn label(&self) -> String {
        match self {
            Shape::Gemm { m, k, n } => format!("{m}x{k}x{n}"),
            Shape::Conv { name, .. } => (*name).to_string(),
        }
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

/// The named convolutions of the suite (NHWC, batch 1).
pub fn conv_shapes() -> Vec<Shape> {
    let conv = |name, params| Shape::Conv { name, params };
    vec![
        conv("conv1", Conv2dParams::new(1, 224, 224, 3, 64, 7, 7).with_stride(2, 2).with_padding(3, 3, 3, 3)),
        conv("r50_3x3", Conv2dParams::new(1, 56, 56, 64, 64, 3, 3).with_padding(1, 1, 1, 1)),
        conv("r50_1x1", Conv2dParams::new(1, 56, 56, 64, 256, 1, 1)),
        conv("r50_late3x3", Conv2dParams::new(1, 14, 14, 256, 256, 3, 3).with_padding(1, 1, 1, 1)),
        conv("mbv2_1x1", Conv2dParams::new(1, 56, 56, 24, 144, 1, 1)),
        conv("mbv2_dw", Conv2dParams::new(1, 56, 56, 144, 144, 3, 3).with_padding(1, 1, 1, 1).with_groups(144)),
    ]
}

/// The default suite: eight GEMMs, then the six convolutions.
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

/// Parses `gemm:MxKxN,conv:NAME,...`.
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
            } else if let Some(name) = item.strip_prefix("conv:") {
                conv_shapes().into_iter().find(|s| s.label() == name).ok_or_else(|| {
                    let names: Vec<String> = conv_shapes().iter().map(Shape::label).collect();
                    format!("{item}: unknown conv; known: {}", names.join(", "))
                })
            } else {
                Err(format!("{item}: expected gemm:MxKxN or conv:NAME"))
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

/// One problem of the suite with its data: u8 output, per-channel i32 bias, and
/// per-tensor Float requantization (what ONNX Runtime and PyTorch users run), with a
/// scale that spreads the outputs over the u8 range.
#[derive(Debug)]
pub struct Problem {
    /// The shape.
    pub shape: Shape,
    /// The data kind.
    pub data: DataKind,
    a: Vec<u8>,
    a_zp: u8,
    /// GEMM: N×K; conv: OHWI.
    b: Vec<i8>,
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

impl Problem {
    /// Generates the problem's data, deterministically from `seed`.
    pub fn new(shape: Shape, data: DataKind, seed: u64) -> Problem {
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
        let b: Vec<i8> = (0..b_len).map(|_| rng.random()).collect();
        let a_zp = a_max / 2 + 1;
        // Accumulators spread as ≈ 74·(a range / 255)·74·√K; aim for ±64 output levels.
        let spread = 74.0 * (f64::from(a_max) / 255.0) * 74.0 * (k.max(1) as f64).sqrt();
        let scale = (64.0 / spread) as f32;
        let stage = OutputStage {
            bias: Some((0..n).map(|_| rng.random_range(-(1 << 16)..(1 << 16))).collect()),
            requantize: Some(Requantize {
                scheme: Requantization::Float { scale: Channelwise::PerTensor(scale) },
                zero_point: 128,
                min: 0,
                max: 255,
            }),
        };
        Problem { shape, data, a, a_zp, b, b_zp: Channelwise::PerTensor(0), stage }
    }

    /// Output elements.
    pub fn output_len(&self) -> usize {
        let (rows, cols) = self.output_dims();
        rows * cols
    }

    /// Packs the weights for `isa`.
    pub fn pack(&self, isa: Isa) -> qgemm::Result<Packed> {
        match &self.shape {
            Shape::Gemm { k, n, .. } => PackedWeights::for_isa(
                isa,
                Weights { data: &self.b, layout: WeightLayout::NxK, k: *k, n: *n, zero_point: &self.b_zp },
            )
            .map(Packed::Gemm),
            Shape::Conv { params: p, .. } => PackedConvWeights::for_isa(
                isa,
                ConvWeights {
                    data: &self.b,
                    layout: qgemm::FilterLayout::Ohwi,
                    out_channels: p.out_channels,
                    kernel_height: p.kernel_height,
                    kernel_width: p.kernel_width,
                    in_channels: p.in_channels,
                    groups: p.groups,
                    zero_point: &self.b_zp,
                },
            )
            .map(Packed::Conv),
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
                let input = ConvInput { data: &self.a, zero_point: self.a_zp };
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
        let unbiased = OutputStage { bias: None, requantize: self.stage.requantize.clone() };
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
        let s = parse_shapes("gemm:1x2x3, conv:r50_1x1").unwrap();
        assert_eq!(s[0], Shape::Gemm { m: 1, k: 2, n: 3 });
        assert_eq!(s[1].label(), "r50_1x1");
        assert!(parse_shapes("gemm:1x2").is_err());
        assert!(parse_shapes("conv:nope").is_err());
        assert!(parse_shapes("matmul:1x1x1").is_err());
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
        for shape in parse_shapes("gemm:7x33x65").unwrap() {
            for data in [DataKind::Full, DataKind::SevenBit] {
                let p = Problem::new(shape.clone(), data, 1);
                let expected = p.reference();
                for &isa in qgemm::available_isas() {
                    let mut out = vec![0u8; p.output_len()];
                    p.run(&p.pack(isa).unwrap(), 2, &mut out, &mut qgemm::Workspace::new()).unwrap();
                    assert_eq!(out, expected, "{isa}");
                }
            }
        }
    }

    #[test]
    fn export_writes_what_the_manifest_says() {
        let dir = std::env::temp_dir().join(format!("qgemm-export-test-{}", std::process::id()));
        let problems: Vec<Problem> = parse_shapes("gemm:3x5x7,conv:mbv2_1x1")
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
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn median_of_even_and_odd_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
