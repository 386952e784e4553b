//! The convolution machinery below the public API, against the reference: the
//! depthwise loop nest with tiny channel blocks and column tiles and with pixel ranges
//! that start and end inside output rows (as thread splits do), and the im2col rows
//! gathered while packing, under tiny cache blocks. Small enough for miri, which CI
//! runs on it (with AVX2 emulated, so the AVX2 kernels' pointer arithmetic is checked
//! too).

mod common;

use std::ops::Range;

use common::{Rng, gemm_kernels};
use qgemm_kernels::driver::{GemmArgs, Scratch, gemm_in};
use qgemm_kernels::dwconv::{self, DwArgs, DwKernel, PackedDw, Plan};
use qgemm_kernels::output::{OutData, OutView, OutputStage, Param, Requant, Rounding, Scheme};
use qgemm_kernels::pack::{BLayout, PackedB};
use qgemm_kernels::rows::{ConvGeometry, Im2col, Rows};
use qgemm_kernels::{Blocking, Kernel};
use qgemm_reference as reference;
use reference::{Channelwise, Conv2dParams};

fn dw_kernels() -> Vec<&'static DwKernel> {
    #[allow(unused_mut)]
    let mut kernels = vec![dwconv::portable_kernel()];
    #[cfg(target_arch = "x86_64")]
    kernels.extend(qgemm_kernels::x86_64::avx2_dwconv::dw_kernel());
    #[cfg(target_arch = "x86_64")]
    kernels.extend(qgemm_kernels::x86_64::avx512_dwconv::dw_kernel());
    kernels
}

fn geometry(p: &Conv2dParams) -> ConvGeometry {
    ConvGeometry {
        batch: p.batch,
        in_height: p.in_height,
        in_width: p.in_width,
        in_channels: p.in_channels,
        kernel_height: p.kernel_height,
        kernel_width: p.kernel_width,
        stride_height: p.stride_height,
        stride_width: p.stride_width,
        dilation_height: p.dilation_height,
        dilation_width: p.dilation_width,
        pad_top: p.pad_top,
        pad_left: p.pad_left,
        out_height: p.out_height().unwrap(),
        out_width: p.out_width().unwrap(),
    }
}

/// One problem's data and its three output stages, in the kernels' and the
/// reference's terms: i32; Float to u8 per channel with bias (fused where the kernel
/// fuses); fixed point to i8 (through the accumulators).
struct Case {
    p: Conv2dParams,
    input: Vec<u8>,
    input_zp: u8,
    weights: Vec<i8>,
    weight_zp: Vec<i8>,
    bias: Vec<i32>,
    scales: Vec<f32>,
}

impl Case {
    fn new(rng: &mut Rng, p: Conv2dParams) -> Case {
        let cg = p.in_channels / p.groups;
        let input = (0..p.batch * p.in_height * p.in_width * p.in_channels).map(|_| rng.next() as u8).collect();
        let weights = (0..p.out_channels * p.kernel_height * p.kernel_width * cg).map(|_| rng.next() as i8).collect();
        Case {
            p,
            input,
            input_zp: rng.next() as u8,
            weights,
            weight_zp: (0..p.out_channels).map(|_| rng.next() as i8).collect(),
            bias: (0..p.out_channels).map(|_| (rng.next() as i32) >> 16).collect(),
            scales: (0..p.out_channels).map(|i| 0.0005 + 0.0003 * (i % 7) as f32).collect(),
        }
    }

    fn reference(&self, stage: usize) -> reference::OutputData {
        let problem = reference::Conv2dProblem {
            params: self.p,
            input: &self.input,
            input_zero_point: self.input_zp,
            weights: &self.weights,
            weight_zero_point: &Channelwise::PerChannel(self.weight_zp.clone()),
        };
        let (stage, out) = match stage {
            0 => (reference::OutputStage::default(), reference::OutputType::I32),
            1 => (
                reference::OutputStage::new(
                    Some(self.bias.clone()),
                    Some(reference::Requantize::from_i32(
                        reference::Requantization::Float { scale: Channelwise::PerChannel(self.scales.clone()) },
                        90,
                        5,
                        240,
                    )),
                ),
                reference::OutputType::U8,
            ),
            _ => (
                reference::OutputStage::requantized(reference::Requantize::from_i32(
                    reference::Requantization::FixedPointHalfUp(reference::FixedPointParams::new(
                        Channelwise::PerTensor(1 << 30),
                        Channelwise::PerTensor(-9),
                    )),
                    -3,
                    -128,
                    127,
                )),
                reference::OutputType::I8,
            ),
        };
        reference::conv2d(&problem, &stage, out)
    }

    fn stage(&self, stage: usize) -> OutputStage<'_> {
        match stage {
            0 => OutputStage::default(),
            1 => OutputStage {
                bias: Some(&self.bias),
                requant: Some(Requant {
                    scheme: Scheme::Float { scale: Param::Channel(&self.scales) },
                    zero_point: 90,
                    min: 5,
                    max: 240,
                }),
            },
            _ => OutputStage {
                bias: None,
                requant: Some(Requant {
                    scheme: Scheme::FixedPoint {
                        rounding: Rounding::DoubleHalfUp,
                        multiplier: Param::Tensor(1 << 30),
                        shift: Param::Tensor(-9),
                    },
                    zero_point: -3,
                    min: -128,
                    max: 127,
                }),
            },
        }
    }

    fn pixels(&self) -> usize {
        self.p.batch * self.p.out_height().unwrap() * self.p.out_width().unwrap()
    }

    /// Runs `f(first_pixel, pixels, channels, out)` over the tiles of `ranges`
    /// (consecutive pixel counts) by the channel ranges that `cuts` (inner channel
    /// boundaries) make, into one output of the stage's type, and returns it in the
    /// reference's terms.
    fn output(
        &self,
        stage: usize,
        ranges: &[usize],
        cuts: &[usize],
        mut f: impl FnMut(usize, usize, Range<usize>, OutData<'_>),
    ) -> reference::OutputData {
        let (pixels, oc) = (self.pixels(), self.p.out_channels);
        let bounds: Vec<usize> = [0].into_iter().chain(cuts.iter().copied()).chain([oc]).collect();
        let mut tiles = |mut out: OutData<'_>| {
            let mut first = 0;
            for &n in ranges {
                for c in bounds.windows(2) {
                    f(first, n, c[0]..c[1], out.window(first, c[0], n, c[1] - c[0]));
                }
                first += n;
            }
        };
        match stage {
            0 => {
                let mut out = vec![0i32; pixels * oc];
                tiles(OutData::I32(OutView::new(&mut out, pixels, oc, oc)));
                reference::OutputData::I32(out)
            }
            1 => {
                let mut out = vec![0u8; pixels * oc];
                tiles(OutData::U8(OutView::new(&mut out, pixels, oc, oc)));
                reference::OutputData::U8(out)
            }
            _ => {
                let mut out = vec![0i8; pixels * oc];
                tiles(OutData::I8(OutView::new(&mut out, pixels, oc, oc)));
                reference::OutputData::I8(out)
            }
        }
    }
}

/// Channel cuts for `oc` channels: none, one inside a block of 8 channels, one at a
/// block boundary (where there are more than 8), and (where there are more than 17)
/// three: inside the first chunk, at an odd chunk, and inside a pair of chunks, so
/// that blocks start mid-chunk and between the chunks of a 16-lane pair.
fn channel_cuts(oc: usize) -> Vec<Vec<usize>> {
    let mut cuts = vec![vec![], vec![(oc / 2 + 1).min(oc - 1)]];
    if oc > 8 {
        cuts.push(vec![8]);
    }
    if oc > 17 {
        cuts.push(vec![3, 8, 17]);
    }
    cuts
}

/// Pixel ranges covering `pixels`: whole, and three uneven pieces that start and end
/// inside output rows.
fn splits(pixels: usize) -> Vec<Vec<usize>> {
    let a = pixels / 3 + 1;
    let b = (pixels - a.min(pixels)) / 2 + 2;
    let b = b.min(pixels - a.min(pixels));
    vec![vec![pixels], vec![a.min(pixels), b, pixels - a.min(pixels) - b]]
}

fn dw_shapes() -> Vec<Conv2dParams> {
    let p = Conv2dParams::new;
    let shapes = vec![
        p([1, 5, 6, 8], 8, [3, 3]).with_padding(1, 1, 1, 1).with_groups(8),
        p([2, 6, 7, 13], 13, [3, 3]).with_stride(2, 2).with_padding(1, 0, 1, 1).with_groups(13),
        p([1, 7, 8, 9], 9, [5, 5]).with_padding(2, 2, 2, 2).with_groups(9),
        p([1, 9, 9, 8], 8, [3, 3]).with_dilation(2, 3).with_padding(2, 1, 2, 3).with_groups(8),
        p([1, 5, 5, 3], 9, [3, 2]).with_stride(1, 2).with_padding(1, 1, 1, 1).with_groups(3),
        p([1, 4, 6, 16], 16, [4, 1]).with_padding(3, 0, 2, 0).with_groups(16),
        // Channel tails around the 16-lane vectors, multipliers, strides 3, dilation 2,
        // 1×7 and 7×1, padding larger than the kernel on every side.
        p([1, 5, 6, 1], 1, [3, 3]).with_padding(1, 1, 1, 1).with_groups(1),
        p([2, 6, 5, 7], 7, [3, 3]).with_stride(3, 3).with_padding(2, 2, 1, 1).with_groups(7),
        p([1, 6, 7, 17], 17, [3, 3]).with_padding(1, 1, 1, 1).with_groups(17),
        p([1, 9, 8, 33], 33, [3, 3]).with_stride(2, 3).with_dilation(2, 2).with_padding(2, 2, 2, 2).with_groups(33),
        p([1, 4, 5, 144], 144, [3, 3]).with_padding(1, 1, 1, 1).with_groups(144),
        p([1, 5, 9, 9], 18, [1, 7]).with_padding(0, 3, 0, 3).with_groups(9),
        p([1, 9, 4, 11], 33, [7, 1]).with_stride(2, 1).with_padding(3, 0, 3, 0).with_groups(11),
        p([2, 3, 4, 24], 48, [5, 5]).with_padding(6, 7, 5, 6).with_groups(24),
        // Kernels wide enough for quads (5 columns and more): dilation, strides,
        // channel tails, and 6 and 8 columns (a last quad half or wholly used).
        p([1, 11, 12, 33], 33, [5, 5]).with_stride(2, 2).with_dilation(1, 2).with_padding(2, 4, 2, 4).with_groups(33),
        p([1, 4, 13, 16], 32, [1, 6]).with_stride(1, 3).with_padding(0, 2, 0, 3).with_groups(16),
        p([1, 5, 14, 20], 20, [3, 8]).with_padding(1, 3, 1, 4).with_groups(20),
    ];
    // Under miri (slow: it checks every access), one small shape.
    if cfg!(miri) { vec![p([1, 3, 4, 9], 9, [3, 3]).with_padding(1, 1, 1, 1).with_groups(9)] } else { shapes }
}

#[test]
fn depthwise_loop_nest_matches_reference() {
    let mut rng = Rng(0x51_7cc1_b727_220a);
    let mut scratch = Scratch::new();
    // Every shape with random weight zero points, and with all of them 0 (symmetric
    // weights, which kernels with quads read 4 taps per lane).
    // (Under miri, which runs the portable kernel only, random zero points alone.)
    let classes: &[bool] = if cfg!(miri) { &[false] } else { &[false, true] };
    for (p, symmetric) in dw_shapes().into_iter().flat_map(|p| classes.iter().map(move |&s| (p, s))) {
        let mut case = Case::new(&mut rng, p);
        if symmetric {
            case.weight_zp.fill(0);
        }
        let g = geometry(&p);
        let zps: Vec<i32> = case.weight_zp.iter().map(|&z| i32::from(z)).collect();
        let packed = PackedDw::try_new(&case.weights, p.out_channels, p.kernel_height, p.kernel_width, &zps).unwrap();
        let default = dwconv::plan(&g, p.out_channels).unwrap();
        let plans = [
            default,
            Plan { chunks: 1, cols: 1 },
            Plan { chunks: 1, cols: 3 },
            Plan { chunks: 2, cols: 2 },
            Plan { chunks: 3, cols: 2 },
        ];
        let plans = if cfg!(miri) { &plans[1..2] } else { &plans[..] };
        for kernel in dw_kernels() {
            for stage in 0..3 {
                let expected = case.reference(stage);
                for &plan in plans {
                    for ranges in splits(case.pixels()).into_iter().skip(usize::from(cfg!(miri))) {
                        for cuts in channel_cuts(p.out_channels).into_iter().skip(usize::from(cfg!(miri))) {
                            let got = case.output(stage, &ranges, &cuts, |first_pixel, pixels, channels, out| {
                                let args = DwArgs {
                                    input: &case.input,
                                    geometry: g,
                                    zero_point: case.input_zp,
                                    weights: &packed,
                                    first_pixel,
                                    pixels,
                                    stage: case.stage(stage),
                                    channels,
                                    out,
                                };
                                dwconv::run_with_plan(kernel, args, plan, &mut scratch);
                            });
                            let what = format!(
                                "{p:?} symmetric {symmetric} stage {stage} {plan:?} ranges {ranges:?} cuts {cuts:?}"
                            );
                            assert_eq!(got, expected, "{} {what}", kernel.name());
                        }
                    }
                }
            }
        }
    }
}

/// Full-range extremes through the depthwise loop nest: A = 255 (or alternating
/// 255/0) with the input zero point at 0 and 255, against weights at −128 and 127 with
/// per-channel zero points at both ends, for every stage, on channel counts around the
/// 8- and 16-lane vectors.
#[test]
fn depthwise_loop_nest_on_extreme_data() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut scratch = Scratch::new();
    let p = Conv2dParams::new;
    let shapes = [
        p([1, 5, 6, 33], 33, [3, 3]).with_padding(1, 1, 1, 1).with_groups(33),
        p([1, 6, 7, 16], 32, [5, 5]).with_stride(2, 2).with_padding(2, 2, 2, 2).with_groups(16),
    ];
    let shapes = if cfg!(miri) { &shapes[..0] } else { &shapes[..] };
    for &p in shapes {
        for (input_zp, a_at) in [(0u8, 0usize), (255, 0), (0, 1), (255, 1)] {
            let mut case = Case::new(&mut rng, p);
            case.input = (0..case.input.len()).map(|i| if a_at == 0 || i % 2 == 0 { 255 } else { 0 }).collect();
            case.input_zp = input_zp;
            let kk = p.kernel_height * p.kernel_width;
            case.weights = (0..case.weights.len()).map(|i| if (i % kk) % 3 == 2 { 127 } else { -128 }).collect();
            // Per-channel zero points at both ends; 0 (symmetric) for the zero point 255.
            case.weight_zp = (0..p.out_channels)
                .map(|o| {
                    if input_zp == 255 {
                        0
                    } else if o % 2 == 0 {
                        -128
                    } else {
                        127
                    }
                })
                .collect();
            let g = geometry(&p);
            let zps: Vec<i32> = case.weight_zp.iter().map(|&z| i32::from(z)).collect();
            let packed =
                PackedDw::try_new(&case.weights, p.out_channels, p.kernel_height, p.kernel_width, &zps).unwrap();
            let plan = dwconv::plan(&g, p.out_channels).unwrap();
            for kernel in dw_kernels() {
                for stage in 0..3 {
                    let expected = case.reference(stage);
                    for cuts in channel_cuts(p.out_channels) {
                        let got = case.output(stage, &[case.pixels()], &cuts, |first_pixel, pixels, channels, out| {
                            let args = DwArgs {
                                input: &case.input,
                                geometry: g,
                                zero_point: case.input_zp,
                                weights: &packed,
                                first_pixel,
                                pixels,
                                stage: case.stage(stage),
                                channels,
                                out,
                            };
                            dwconv::run_with_plan(kernel, args, plan, &mut scratch);
                        });
                        let what = format!("{p:?} stage {stage} zp {input_zp} pattern {a_at} cuts {cuts:?}");
                        assert_eq!(got, expected, "{} {what}", kernel.name());
                    }
                }
            }
        }
    }
}

/// Every GEMM kernel here, with its own blocking and a tiny one.
fn kernels() -> Vec<Kernel> {
    gemm_kernels()
        .into_iter()
        .flat_map(|base| {
            let t = base.tile();
            [base, base.with_blocking(Blocking { mc: t.mr, kc: 3 * t.k_step(), nc: t.nr })]
        })
        .collect()
}

#[test]
fn im2col_rows_match_reference() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let p = Conv2dParams::new;
    let shapes = [
        p([1, 5, 6, 3], 5, [3, 3]).with_padding(1, 2, 1, 0),
        p([2, 7, 6, 4], 6, [3, 2]).with_stride(2, 1).with_dilation(1, 2).with_padding(2, 1, 0, 2),
        p([1, 6, 7, 6], 4, [1, 1]).with_stride(2, 3).with_padding(1, 1, 1, 1).with_groups(2),
        p([1, 4, 4, 5], 3, [3, 3]).with_padding(4, 3, 4, 5),
    ];
    let mut scratch = Scratch::new();
    let shapes = if cfg!(miri) { &shapes[..1] } else { &shapes[..] };
    for &params in shapes {
        let case = Case::new(&mut rng, params);
        let g = geometry(&params);
        let (cg, ocg) = (params.in_channels / params.groups, params.out_channels / params.groups);
        let k = params.kernel_height * params.kernel_width * cg;
        let max_value = case.input.iter().copied().max().unwrap().max(case.input_zp);
        // Under miri, the tiny blockings only.
        for kernel in kernels().into_iter().skip(usize::from(cfg!(miri))).step_by(1 + usize::from(cfg!(miri))) {
            let groups: Vec<PackedB> = (0..params.groups)
                .map(|gi| {
                    let w = &case.weights[gi * ocg * k..(gi + 1) * ocg * k];
                    let zps = &case.weight_zp[gi * ocg..(gi + 1) * ocg];
                    PackedB::try_new(kernel.tile(), w, BLayout::NxK, k, ocg, zps).unwrap()
                })
                .collect();
            for stage in 0..3 {
                let expected = case.reference(stage);
                for ranges in splits(case.pixels()).into_iter().skip(usize::from(cfg!(miri))) {
                    let got = case.output(stage, &ranges, &[], |first_pixel, pixels, _, mut out| {
                        for (gi, b) in groups.iter().enumerate() {
                            let rows = Rows::Im2col(Im2col {
                                input: &case.input,
                                geometry: g,
                                channel0: gi * cg,
                                group_channels: cg,
                                first_pixel,
                                zero_point: case.input_zp,
                                max_value,
                                flip: false,
                            });
                            let args = GemmArgs {
                                m: pixels,
                                a: rows,
                                a_zp: case.input_zp,
                                b,
                                stage: case.stage(stage).from_column(gi * ocg),
                                columns: 0..ocg,
                                out: out.window(0, gi * ocg, pixels, ocg),
                            };
                            gemm_in(&kernel, args, &mut scratch);
                        }
                    });
                    assert_eq!(got, expected, "{} {params:?} stage {stage} ranges {ranges:?}", kernel.name());
                }
            }
        }
    }
}
