//! Direct convolution: nested loops over the output, no im2col, so that it checks the
//! im2col path of the kernels independently.

use crate::gemm::apply_output_stage;
use crate::types::{Channelwise, Conv2dParams, OutputData, OutputStage, OutputType};

/// One convolution: NHWC u8 input, OHWI i8 weights, NHWC output.
#[derive(Clone, Copy, Debug)]
pub struct Conv2dProblem<'a> {
    /// The shape.
    pub params: Conv2dParams,
    /// `[batch, in_height, in_width, in_channels]`, dense.
    pub input: &'a [u8],
    /// The input zero point; padded taps read as this value.
    pub input_zero_point: u8,
    /// `[out_channels, kernel_height, kernel_width, in_channels / groups]`, dense.
    pub weights: &'a [i8],
    /// The weight zero point, per tensor or per output channel.
    pub weight_zero_point: &'a Channelwise<i8>,
}

/// The i32 accumulators, `[batch, out_height, out_width, out_channels]`, dense:
/// `Σ (x − x_zp)·(w − w_zp[oc])` over the taps of the output's group, where a tap in
/// the padding reads `x_zp` and so adds exactly zero. Sums wrap.
///
/// # Panics
/// If the shape is invalid (see [`Conv2dParams::out_height`]) or a buffer's length
/// does not match it.
pub fn conv2d_accumulators(problem: &Conv2dProblem<'_>) -> Vec<i32> {
    let p = &problem.params;
    assert!(p.groups >= 1, "groups must be at least 1");
    assert!(p.in_channels.is_multiple_of(p.groups) && p.out_channels.is_multiple_of(p.groups), "groups");
    let oh_total = p.out_height().expect("kernel does not fit the padded input");
    let ow_total = p.out_width().expect("kernel does not fit the padded input");
    let cg = p.in_channels_per_group();
    let ocg = p.out_channels_per_group();
    assert_eq!(problem.input.len(), p.batch * p.in_height * p.in_width * p.in_channels, "input length");
    assert_eq!(problem.weights.len(), p.out_channels * p.kernel_height * p.kernel_width * cg, "weights length");
    if let Some(len) = problem.weight_zero_point.channels() {
        assert_eq!(len, p.out_channels, "per-channel weight zero points");
    }

    let x_zp = i32::from(problem.input_zero_point);
    let input_at = |b: usize, h: usize, w: usize, c: usize| -> i32 {
        i32::from(problem.input[((b * p.in_height + h) * p.in_width + w) * p.in_channels + c])
    };
    let weight_at = |oc: usize, kh: usize, kw: usize, ci: usize| -> i32 {
        i32::from(problem.weights[((oc * p.kernel_height + kh) * p.kernel_width + kw) * cg + ci])
    };

    let mut acc = Vec::with_capacity(p.batch * oh_total * ow_total * p.out_channels);
    for b in 0..p.batch {
        for oh in 0..oh_total {
            for ow in 0..ow_total {
                for oc in 0..p.out_channels {
                    let group = oc / ocg;
                    let w_zp = i32::from(problem.weight_zero_point.at(oc));
                    let mut sum = 0i32;
                    for kh in 0..p.kernel_height {
                        // The input row under this tap, if it is not in the padding.
                        let ih = (oh * p.stride_height + kh * p.dilation_height)
                            .checked_sub(p.pad_top)
                            .filter(|&ih| ih < p.in_height);
                        for kw in 0..p.kernel_width {
                            let iw = (ow * p.stride_width + kw * p.dilation_width)
                                .checked_sub(p.pad_left)
                                .filter(|&iw| iw < p.in_width);
                            for ci in 0..cg {
                                let x = match (ih, iw) {
                                    (Some(ih), Some(iw)) => input_at(b, ih, iw, group * cg + ci),
                                    _ => x_zp,
                                };
                                let w = weight_at(oc, kh, kw, ci);
                                sum = sum.wrapping_add((x - x_zp) * (w - w_zp));
                            }
                        }
                    }
                    acc.push(sum);
                }
            }
        }
    }
    acc
}

/// A whole convolution: accumulators, then the output stage, per output channel.
pub fn conv2d(problem: &Conv2dProblem<'_>, stage: &OutputStage, out: OutputType) -> OutputData {
    let acc = conv2d_accumulators(problem);
    apply_output_stage(&acc, problem.params.out_channels, stage, out)
}
