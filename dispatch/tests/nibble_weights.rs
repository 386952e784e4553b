//! 4-bit weights (int4 and uint4, two per byte) against the reference: the bytes are
//! unpacked by `reference::unpack_nibbles` (checked against ONNX's own unpacking in the
//! reference's tests) and the reference GEMM or convolution runs on the i8 values with
//! the same zero point. Every ISA, both layouts, odd K and N, tails around every tile,
//! zero points at both ends per tensor and per column, full-range activations against
//! the extreme weights, wrapping K, every scheme and output type, 1, 2, 3 and 7
//! threads, the conv paths, errors, saving and loading, and the memory they take.

mod common;

use common::{Rng, dequantize_for, first_mismatch, requantize_for, run_into, schemes};
use proptest::prelude::*;
use qgemm::reference::{self, OutputData};
use qgemm::{
    Activations, Channelwise, Conv2dParams, ConvInput, ErrorKind, FilterLayout, NibbleConvWeights, NibbleFormat,
    NibbleWeights, Options, OutputStage, OutputType, PackedConvWeights, PackedWeights, WeightLayout,
};

const FORMATS: [NibbleFormat; 2] = [NibbleFormat::Int4, NibbleFormat::UInt4];

fn signed(format: NibbleFormat) -> bool {
    format == NibbleFormat::Int4
}

/// `rows × cols` values of `format`, drawn as `fill` says, stored two per byte with
/// each row starting on a byte; the unused high nibble of an odd row's last byte holds
/// garbage (which must be ignored).
fn nibble_bytes(rng: &mut Rng, format: NibbleFormat, rows: usize, cols: usize, fill: Fill) -> Vec<u8> {
    let (lo, hi) = match format {
        NibbleFormat::Int4 => (0x8u8, 0x7u8), // −8 and 7 as nibbles
        _ => (0x0, 0xf),
    };
    let mut bytes = Vec::new();
    for _ in 0..rows {
        for c in (0..cols).step_by(2) {
            let mut nibble = |i: usize| match fill {
                Fill::Random => (rng.next_u64() >> 60) as u8,
                Fill::Low => lo,
                Fill::High => hi,
                Fill::Alternating => [lo, hi][i % 2],
            };
            let low = nibble(c);
            let high = if c + 1 < cols { nibble(c + 1) } else { (rng.next_u64() >> 60) as u8 | 0x9 };
            bytes.push(low | high << 4);
        }
    }
    bytes
}

#[derive(Clone, Copy, Debug)]
enum Fill {
    Random,
    Low,
    High,
    Alternating,
}

/// A zero point of `format`: one of its ends or its middle, per tensor or per column.
fn zero_point(rng: &mut Rng, format: NibbleFormat, class: usize, n: usize) -> Channelwise<i8> {
    let (lo, hi) = (*format.range().start(), *format.range().end());
    match class % 4 {
        0 => Channelwise::PerTensor(lo),
        1 => Channelwise::PerTensor(hi),
        2 => Channelwise::PerTensor(if signed(format) { 0 } else { 8 }),
        _ => Channelwise::PerChannel((0..n).map(|c| [lo, hi, lo + rng.below(16) as i8][c % 3]).collect()),
    }
}

struct Case {
    format: NibbleFormat,
    layout: WeightLayout,
    m: usize,
    n: usize,
    k: usize,
    a: Vec<u8>,
    a_zp: u8,
    bytes: Vec<u8>,
    zp: Channelwise<i8>,
    stage: OutputStage,
    out: OutputType,
}

impl Case {
    fn new(rng: &mut Rng, format: NibbleFormat, layout: WeightLayout, (m, n, k): (usize, usize, usize)) -> Case {
        let (rows, cols) = if layout == WeightLayout::KxN { (k, n) } else { (n, k) };
        let class = rng.below(4);
        let zp = zero_point(rng, format, class, n);
        Case {
            format,
            layout,
            m,
            n,
            k,
            a: (0..m * k).map(|_| rng.u8()).collect(),
            a_zp: rng.u8(),
            bytes: nibble_bytes(rng, format, rows, cols, Fill::Random),
            zp,
            stage: OutputStage::i32(),
            out: OutputType::I32,
        }
    }

    fn weights(&self) -> NibbleWeights<'_> {
        NibbleWeights::new(&self.bytes, self.format, self.layout, self.k, self.n).with_zero_point(self.zp.clone())
    }

    fn expected(&self) -> OutputData {
        let (rows, cols) = if self.layout == WeightLayout::KxN { (self.k, self.n) } else { (self.n, self.k) };
        let b = reference::unpack_nibbles(&self.bytes, rows, cols, signed(self.format));
        let problem = reference::GemmProblem {
            m: self.m,
            n: self.n,
            k: self.k,
            a: &self.a,
            a_row_stride: self.k,
            a_zero_point: self.a_zp,
            b: &b,
            b_layout: self.layout,
            b_zero_point: &self.zp,
        };
        reference::gemm(&problem, &self.stage, self.out)
    }

    fn check(&self, threads: &[usize], label: &str) {
        let expected = self.expected();
        for &isa in qgemm::available_isas() {
            let packed = PackedWeights::for_isa(isa, self.weights()).expect("valid weights");
            assert!(packed.is_4_bit());
            for &t in threads {
                let options = Options::new().with_threads(t);
                let a = Activations::new(&self.a, self.m, self.k, self.a_zp);
                let (got, gaps) = run_into(self.out, self.m, self.n, self.n + 3, |c| {
                    qgemm::gemm_with(&a, &packed, &self.stage, c, &options)
                });
                assert!(
                    got == expected,
                    "{label}: {isa}, {t} threads, {}x{}x{} {:?} {:?} zp {:?} {:?}: {}",
                    self.m,
                    self.n,
                    self.k,
                    self.format,
                    self.layout,
                    self.zp,
                    self.out,
                    first_mismatch(&got, &expected, self.n)
                );
                assert!(gaps, "{label}: {isa} wrote between output rows");
            }
        }
    }
}

/// Shapes with odd K and N and tails on each side of every tile's rows (1–8 and more),
/// columns (8, 16, 32, 48, 64) and K-groups and pairs of them.
const SHAPES: [(usize, usize, usize); 10] = [
    (1, 1, 1),
    (1, 17, 33),
    (2, 47, 31),
    (3, 49, 7),
    (5, 63, 129),
    (6, 65, 64),
    (7, 31, 257),
    (8, 96, 65),
    (9, 33, 130),
    (17, 129, 515),
];

#[test]
fn every_isa_equals_the_reference_on_every_shape_zero_point_and_layout() {
    let mut rng = Rng::new(0x4b17);
    for format in FORMATS {
        for (s, &shape) in SHAPES.iter().enumerate() {
            for (l, layout) in [WeightLayout::KxN, WeightLayout::NxK].into_iter().enumerate() {
                let mut case = Case::new(&mut rng, format, layout, shape);
                case.zp = zero_point(&mut rng, format, s + l, shape.1);
                case.check(&[1 + (s + l) % 2], "shapes");
            }
        }
    }
}

#[test]
fn extreme_weights_against_full_range_activations() {
    // A = 255 and 0 against weights at both ends of the format, zero points at both
    // ends: every |W − zp| up to 15, the largest products there are.
    let mut rng = Rng::new(0xe4);
    for format in FORMATS {
        for fill in [Fill::Low, Fill::High, Fill::Alternating] {
            for zp_class in 0..4 {
                let (m, n, k) = (3, 37, 301);
                let mut case = Case::new(&mut rng, format, WeightLayout::NxK, (m, n, k));
                case.a = (0..m * k).map(|i| [255, 0, 255][i % 3]).collect();
                case.a_zp = [0, 255, 128, 7][zp_class];
                case.bytes = nibble_bytes(&mut rng, format, n, k, fill);
                case.zp = zero_point(&mut rng, format, zp_class, n);
                case.check(&[1], "extremes");
            }
        }
    }
}

#[test]
fn wrapping_k() {
    // K = 70,000 as for 8-bit weights (|acc| up to 70,000 · 255 · 15, no wrap), and
    // K = 600,001, where 255 · 15 per product wraps i32: the sum is defined modulo 2^32.
    let mut rng = Rng::new(0x70000);
    for (format, k) in [(NibbleFormat::UInt4, 70_000), (NibbleFormat::Int4, 600_001)] {
        let (m, n) = (2, 3);
        let mut case = Case::new(&mut rng, format, WeightLayout::NxK, (m, n, k));
        case.a = vec![255; m * k];
        case.a_zp = 0;
        case.bytes = nibble_bytes(&mut rng, format, n, k, Fill::Low);
        // int4 −8 against zero point 7: every W − zp is −15.
        case.zp = Channelwise::PerTensor(*format.range().end());
        if k > 600_000 {
            let exact = -(k as i64) * 255 * 15;
            assert!(exact < i64::from(i32::MIN), "the sum wraps");
        }
        case.check(&[1, 2], "wrapping K");
    }
}

#[test]
fn every_scheme_and_output_type() {
    let mut rng = Rng::new(0x5c4e);
    let (m, n, k) = (5, 41, 77);
    for format in FORMATS {
        for per_channel in [false, true] {
            for scheme in schemes(&mut rng, n, per_channel, k) {
                for out in [OutputType::U8, OutputType::I8] {
                    let mut case = Case::new(&mut rng, format, WeightLayout::NxK, (m, n, k));
                    let bias: Vec<i32> = (0..n).map(|_| rng.next_u64() as i32 >> 12).collect();
                    case.stage =
                        OutputStage::requantized(requantize_for(&mut rng, scheme.clone(), out)).with_bias(bias);
                    case.out = out;
                    case.check(&[1], "schemes");
                }
            }
            let mut case = Case::new(&mut rng, format, WeightLayout::KxN, (m, n, k));
            case.stage = OutputStage::dequantized(dequantize_for(&mut rng, n, per_channel, true));
            case.out = OutputType::F32;
            case.check(&[1], "f32 output");
        }
    }
}

#[test]
fn threads_split_rows_and_columns_alike() {
    let mut rng = Rng::new(0x7);
    for format in FORMATS {
        for shape in [(64, 200, 300), (1, 1000, 511), (300, 9, 64)] {
            let case = Case::new(&mut rng, format, WeightLayout::NxK, shape);
            case.check(&[1, 2, 3, 7], "threads");
        }
    }
}

/// A convolution with 4-bit weights against the reference on the unpacked ones.
fn check_conv(rng: &mut Rng, format: NibbleFormat, p: Conv2dParams, layout: FilterLayout) {
    let k = p.kernel_height * p.kernel_width * p.in_channels / p.groups;
    let bytes = nibble_bytes(rng, format, p.out_channels, k, Fill::Random);
    let class = rng.below(4);
    let zp = zero_point(rng, format, class, p.out_channels);
    let w = reference::unpack_nibbles(&bytes, p.out_channels, k, signed(format));
    // The reference takes OHWI; OIHW rows are reordered within each output channel.
    let ohwi: Vec<i8> = match layout {
        FilterLayout::Ohwi => w,
        _ => {
            let (taps, cg) = (p.kernel_height * p.kernel_width, p.in_channels / p.groups);
            (0..p.out_channels * k).map(|i| w[i / k * k + (i % k % cg) * taps + i % k / cg]).collect()
        }
    };
    let input: Vec<u8> = (0..p.batch * p.in_height * p.in_width * p.in_channels).map(|_| rng.u8()).collect();
    let problem = reference::Conv2dProblem {
        params: p,
        input: &input,
        input_zero_point: 250,
        weights: &ohwi,
        weight_zero_point: &zp,
    };
    let float = schemes(rng, p.out_channels, true, k)[3].clone();
    let r = requantize_for(rng, float, OutputType::U8);
    let stage = OutputStage::requantized(r);
    let expected = reference::conv2d(&problem, &stage, OutputType::U8);
    let rows = p.batch * p.out_height().unwrap() * p.out_width().unwrap();
    for &isa in qgemm::available_isas() {
        let weights = NibbleConvWeights::new(&bytes, format, &p).with_layout(layout).with_zero_point(zp.clone());
        let packed = PackedConvWeights::for_isa(isa, weights).expect("valid weights");
        for threads in [1, 3] {
            let options = Options::new().with_threads(threads);
            let (got, gaps) = run_into(OutputType::U8, rows, p.out_channels, p.out_channels + 1, |c| {
                qgemm::conv2d_with(&ConvInput::new(&input, 250), &packed, &p, &stage, c, &options)
            });
            assert!(
                got == expected && gaps,
                "{isa}, {threads} threads: {p:?} {format:?} {layout:?}: {}",
                first_mismatch(&got, &expected, p.out_channels)
            );
        }
    }
}

#[test]
fn convolutions_on_every_path_but_depthwise_kernels() {
    let mut rng = Rng::new(0xc04);
    let shapes = [
        // 1×1, dense and strided.
        Conv2dParams::new([1, 6, 5, 24], 19, [1, 1]),
        Conv2dParams::new([2, 7, 7, 13], 8, [1, 1]).with_stride(2, 2),
        // 3×3 padded, odd channels (rows of odd length end in a half-used byte).
        Conv2dParams::new([1, 7, 6, 7], 33, [3, 3]).with_padding(1, 1, 1, 1),
        Conv2dParams::new([1, 9, 8, 16], 48, [3, 3]).with_padding(1, 0, 1, 2).with_stride(2, 1),
        // Groups, and a depthwise shape (grouped GEMMs for 4-bit weights).
        Conv2dParams::new([1, 5, 5, 12], 6, [3, 1]).with_groups(3),
        Conv2dParams::new([1, 8, 8, 16], 16, [3, 3]).with_padding(1, 1, 1, 1).with_groups(16),
    ];
    for (i, p) in shapes.into_iter().enumerate() {
        for format in FORMATS {
            let layout = if i % 2 == 0 { FilterLayout::Ohwi } else { FilterLayout::Oihw };
            check_conv(&mut rng, format, p, layout);
        }
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    // A row of 5 values takes 3 bytes; 7 rows take 21.
    let bytes = vec![0x11u8; 21];
    let ok = PackedWeights::new(NibbleWeights::uint4_nxk(&bytes, 7, 5));
    assert!(ok.is_ok());
    for (w, what) in [
        (NibbleWeights::uint4_nxk(&bytes[..20], 7, 5), "bytes"),
        (NibbleWeights::uint4_nxk(&bytes, 7, 7), "bytes"),
        // Flat packing (35 values in 18 bytes) is not the row layout.
        (NibbleWeights::int4_nxk(&bytes[..18], 7, 5), "bytes"),
        (NibbleWeights::uint4_kxn(&bytes, 5, 7), "bytes"),
    ] {
        let e = PackedWeights::new(w).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BufferLength, "{e}");
        assert!(e.to_string().contains(what) && e.to_string().contains("two values per byte"), "{e}");
    }
    for (w, zp) in [
        (NibbleWeights::uint4_nxk(&bytes, 7, 5), Channelwise::PerTensor(16)),
        (NibbleWeights::uint4_nxk(&bytes, 7, 5), Channelwise::PerTensor(-1)),
        (NibbleWeights::int4_nxk(&bytes, 7, 5), Channelwise::PerTensor(8)),
        (NibbleWeights::int4_nxk(&bytes, 7, 5), Channelwise::PerChannel(vec![0, 0, 0, -9, 0, 0, 0])),
    ] {
        let e = PackedWeights::new(w.with_zero_point(zp)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ZeroPoint, "{e}");
        assert!(e.to_string().contains("outside"), "{e}");
    }
    let e = PackedWeights::new(NibbleWeights::uint4_nxk(&bytes, 7, 5).with_zero_point(vec![1, 2])).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BufferLength, "{e}");
    // Conv: OC = 4 rows of 3·3·3 = 27 values, 14 bytes each.
    let p = Conv2dParams::new([1, 5, 5, 3], 4, [3, 3]);
    let conv = vec![0u8; 4 * 14];
    assert!(PackedConvWeights::new(NibbleConvWeights::new(&conv, NibbleFormat::Int4, &p)).is_ok());
    let e = PackedConvWeights::new(NibbleConvWeights::new(&conv[1..], NibbleFormat::Int4, &p)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BufferLength, "{e}");
    let bad_zp = NibbleConvWeights::new(&conv, NibbleFormat::UInt4, &p).with_zero_point(-3);
    assert_eq!(PackedConvWeights::new(bad_zp).unwrap_err().kind(), ErrorKind::ZeroPoint);
}

#[test]
fn weights_stay_4_bit_and_round_trip_through_bytes() {
    let mut rng = Rng::new(0x5a7e);
    let (k, n) = (1024, 1024);
    let bytes = nibble_bytes(&mut rng, NibbleFormat::UInt4, n, k, Fill::Random);
    for &isa in qgemm::available_isas() {
        let packed = PackedWeights::for_isa(isa, NibbleWeights::uint4_nxk(&bytes, n, k).with_zero_point(8)).unwrap();
        let per_weight = packed.heap_size() as f64 / (k * n) as f64;
        println!("{isa}: {per_weight:.4} bytes per weight, {k}×{n} uint4 weights packed");
        assert!(per_weight <= 0.55, "{isa}: {per_weight} bytes per weight");
    }
    // Saved and loaded, GEMM and conv: the same file again, 4-bit, the same results.
    let mut case = Case::new(&mut rng, NibbleFormat::Int4, WeightLayout::KxN, (3, 29, 45));
    case.zp = Channelwise::PerChannel((0..29).map(|c| [-8, 7, 0][c % 3]).collect());
    let packed = PackedWeights::new(case.weights()).unwrap();
    let saved = packed.to_bytes();
    let loaded = PackedWeights::from_bytes(&saved).unwrap();
    assert!(loaded.is_4_bit());
    assert_eq!(loaded.to_bytes(), saved);
    let a = Activations::new(&case.a, case.m, case.k, case.a_zp);
    let (got, _) = run_into(OutputType::I32, case.m, case.n, case.n, |c| qgemm::gemm(&a, &loaded, &case.stage, c));
    assert_eq!(got, case.expected());
    let p = Conv2dParams::new([1, 4, 4, 5], 3, [3, 3]).with_padding(1, 1, 1, 1);
    let conv_bytes = nibble_bytes(&mut rng, NibbleFormat::UInt4, 3, 45, Fill::Random);
    let conv = PackedConvWeights::new(NibbleConvWeights::new(&conv_bytes, NibbleFormat::UInt4, &p).with_zero_point(3))
        .unwrap();
    let saved = conv.to_bytes();
    assert_eq!(PackedConvWeights::from_bytes(&saved).unwrap().to_bytes(), saved);
}

prop_compose! {
    fn nibble_case()(m in 1usize..12, n in 1usize..70, k in 1usize..200, int4 in any::<bool>(), kxn in any::<bool>(),
                     zp_class in 0usize..4, seed in any::<u64>()) -> (Case, usize) {
        let mut rng = Rng::new(seed);
        let format = if int4 { NibbleFormat::Int4 } else { NibbleFormat::UInt4 };
        let layout = if kxn { WeightLayout::KxN } else { WeightLayout::NxK };
        let mut case = Case::new(&mut rng, format, layout, (m, n, k));
        case.zp = zero_point(&mut rng, format, zp_class, n);
        (case, 1 + rng.below(3))
    }
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{} {:?} {:?} zp {:?}", self.m, self.n, self.k, self.format, self.layout, self.zp)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn gemm_with_4_bit_weights_equals_reference((case, threads) in nibble_case()) {
        case.check(&[threads], "proptest");
    }
}
