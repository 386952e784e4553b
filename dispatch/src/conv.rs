//! 2-D convolution over NHWC input, as one GEMM per group.
//!
//! Output pixels are GEMM rows (`M = N·OH·OW`), a group's output channels are its
//! columns, and its taps `(kh, kw, c)` are K, in the order of OHWI weights, so each
//! group's weights are an N×K matrix packed like any other. A 1×1 convolution with
//! stride 1 and no padding reads the input directly as A; every other shape gathers
//! its taps (im2col) into a scratch buffer a block of rows at a time, never the whole
//! image: scratch stays below [`IM2COL_SCRATCH_BYTES`] (or one tile of rows, if a
//! single row is larger). Padded taps are filled with the input zero point, so they
//! add exactly zero and the kernels need no special case.

use qgemm_kernels::Kernel;
use qgemm_kernels::driver::{self, GemmArgs};
use qgemm_kernels::output::OutData;
use qgemm_kernels::pack::{BLayout, PackedB};
use qgemm_reference::{Channelwise, Conv2dParams, OutputStage};

use crate::error::{Result, bail, out_of_memory};
use crate::gemm::{Options, OutputMatrix, for_row_ranges};
use crate::isa::{Isa, kernel_for, selected_isa};
use crate::validate::{check_weight_zero_points, output_stage, product};

/// The most im2col scratch one thread holds, in bytes (unless one row of taps is
/// larger, when it holds one tile of rows).
pub const IM2COL_SCRATCH_BYTES: usize = 256 * 1024;

/// Convolution weights as the caller holds them: OHWI,
/// `[out_channels, kernel_height, kernel_width, in_channels / groups]`, dense.
#[derive(Clone, Copy, Debug)]
pub struct ConvWeights<'a> {
    /// The weights.
    pub data: &'a [i8],
    /// OC, a multiple of `groups`.
    pub out_channels: usize,
    /// KH.
    pub kernel_height: usize,
    /// KW.
    pub kernel_width: usize,
    /// C, the input channels of the convolution (all groups), a multiple of `groups`.
    pub in_channels: usize,
    /// Groups; `groups == in_channels` is depthwise.
    pub groups: usize,
    /// The weight zero point, per tensor or per output channel.
    pub zero_point: &'a Channelwise<i8>,
}

/// The shape fields of conv weights, as the packing saw them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FilterShape {
    out_channels: usize,
    kernel_height: usize,
    kernel_width: usize,
    in_channels: usize,
    groups: usize,
}

/// Convolution weights packed once for one ISA: one packed N×K matrix per group.
#[derive(Clone, Debug)]
pub struct PackedConvWeights {
    isa: Isa,
    kernel: &'static Kernel,
    shape: FilterShape,
    groups: Vec<PackedB>,
}

impl PackedConvWeights {
    /// Packs `weights` for the [selected ISA](crate::selected_isa).
    ///
    /// # Errors
    /// If a size is zero where it must not be, the channel counts are not multiples of
    /// `groups`, the length is not `OC·KH·KW·C/groups`, a product overflows, the
    /// per-channel zero points are not OC, or `QGEMM_ISA` is invalid.
    pub fn new(weights: ConvWeights<'_>) -> Result<PackedConvWeights> {
        PackedConvWeights::for_isa(selected_isa()?, weights)
    }

    /// Packs `weights` for `isa`.
    ///
    /// # Errors
    /// As [`new`](Self::new), and if `isa` cannot run on this CPU.
    pub fn for_isa(isa: Isa, weights: ConvWeights<'_>) -> Result<PackedConvWeights> {
        let kernel = kernel_for(isa)?;
        let w = weights;
        let shape = FilterShape {
            out_channels: w.out_channels,
            kernel_height: w.kernel_height,
            kernel_width: w.kernel_width,
            in_channels: w.in_channels,
            groups: w.groups,
        };
        check_groups(w.groups, w.in_channels, w.out_channels)?;
        if w.kernel_height == 0 || w.kernel_width == 0 {
            bail!(Dimension, "kernel size {}×{} has a zero side", w.kernel_height, w.kernel_width);
        }
        let cg = w.in_channels / w.groups;
        let ocg = w.out_channels / w.groups;
        let k = product("conv weights KH·KW·C/groups", &[w.kernel_height, w.kernel_width, cg])?;
        let len = product("conv weights OC·KH·KW·C/groups", &[w.out_channels, k])?;
        if w.data.len() != len {
            bail!(
                BufferLength,
                "conv weights: {} values for OHWI [{}, {}, {}, {cg}] (needs {len})",
                w.data.len(),
                w.out_channels,
                w.kernel_height,
                w.kernel_width
            );
        }
        check_weight_zero_points(w.zero_point, w.out_channels)?;
        let tile = kernel.tile();
        if k.checked_next_multiple_of(tile.kg).is_none() || ocg.checked_next_multiple_of(tile.nr).is_none() {
            bail!(Overflow, "conv weights: K = {k} or OC/groups = {ocg} overflows when padded to the tile");
        }
        let zps = w.zero_point.values();
        let groups = (0..w.groups)
            .map(|g| {
                let data = &w.data[g * ocg * k..(g + 1) * ocg * k];
                let zp = if zps.len() == 1 { zps } else { &zps[g * ocg..(g + 1) * ocg] };
                PackedB::try_new(tile, data, BLayout::NxK, k, ocg, zp)
                    .map_err(|e| out_of_memory(&format!("conv weights group {g}"), e))
            })
            .collect::<Result<_>>()?;
        Ok(PackedConvWeights { isa, kernel, shape, groups })
    }

    /// The ISA the weights were packed for.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Bytes of packed data held.
    pub fn heap_size(&self) -> usize {
        self.groups.iter().map(PackedB::heap_size).sum()
    }
}

fn check_groups(groups: usize, in_channels: usize, out_channels: usize) -> Result<()> {
    if groups == 0 {
        bail!(Dimension, "groups = 0; at least one group is needed");
    }
    if !in_channels.is_multiple_of(groups) || !out_channels.is_multiple_of(groups) {
        bail!(
            Dimension,
            "groups = {groups} divides neither in_channels = {in_channels} nor out_channels = {out_channels} evenly"
        );
    }
    Ok(())
}

/// The input of a convolution: NHWC u8, dense, with its zero point.
#[derive(Clone, Copy, Debug)]
pub struct ConvInput<'a> {
    /// `[batch, in_height, in_width, in_channels]`.
    pub data: &'a [u8],
    /// The input zero point; padded taps read as this value.
    pub zero_point: u8,
}

/// Checks a convolution's shape and returns `(out_height, out_width)`.
pub(crate) fn check_params(p: &Conv2dParams) -> Result<(usize, usize)> {
    check_groups(p.groups, p.in_channels, p.out_channels)?;
    for (name, v) in [
        ("kernel_height", p.kernel_height),
        ("kernel_width", p.kernel_width),
        ("stride_height", p.stride_height),
        ("stride_width", p.stride_width),
        ("dilation_height", p.dilation_height),
        ("dilation_width", p.dilation_width),
    ] {
        if v == 0 {
            bail!(Dimension, "conv {name} = 0; it must be at least 1");
        }
    }
    let dims = [
        ("height", p.in_height, p.pad_top, p.pad_bottom, p.kernel_height, p.dilation_height),
        ("width", p.in_width, p.pad_left, p.pad_right, p.kernel_width, p.dilation_width),
    ];
    for (name, input, before, after, kernel, dilation) in dims {
        let padded = input.checked_add(before).and_then(|x| x.checked_add(after));
        let extent = (kernel - 1).checked_mul(dilation).and_then(|x| x.checked_add(1));
        match (padded, extent) {
            (Some(padded), Some(extent)) if extent > padded => bail!(
                ConvOutputSize,
                "conv {name}: the kernel spans {extent} (size {kernel}, dilation {dilation}) but the padded input \
                 is only {padded} ({input} + padding {before} + {after}); the output would be empty"
            ),
            (Some(_), Some(_)) => {}
            _ => bail!(Overflow, "conv {name}: padded input or dilated kernel overflows usize"),
        }
    }
    let oh = p.out_height().expect("checked above");
    let ow = p.out_width().expect("checked above");
    Ok((oh, ow))
}

/// A convolution, single-threaded. See [`conv2d_with`].
pub fn conv2d(
    input: &ConvInput<'_>,
    weights: &PackedConvWeights,
    params: &Conv2dParams,
    stage: &OutputStage,
    output: OutputMatrix<'_>,
) -> Result<()> {
    conv2d_with(input, weights, params, stage, output, &Options::default())
}

/// A convolution: NHWC `input`, packed OHWI `weights`, the output stage per output
/// channel, into `output` viewed as a `(N·OH·OW) × OC` matrix (its row stride may
/// exceed OC, to write into a wider channel-concatenated tensor).
///
/// Everything is checked before anything is written: on error the output is untouched.
///
/// # Errors
/// Invalid shapes (zero kernel size, stride, dilation or groups; channels not a
/// multiple of groups; a kernel that does not fit the padded input), an input length
/// other than `N·H·W·C`, weights packed for another shape or ISA, an output that is
/// not `(N·OH·OW) × OC`, and every error of the output stage and options.
pub fn conv2d_with(
    input: &ConvInput<'_>,
    weights: &PackedConvWeights,
    params: &Conv2dParams,
    stage: &OutputStage,
    output: OutputMatrix<'_>,
    options: &Options,
) -> Result<()> {
    options.check(weights.isa)?;
    let p = *params;
    let (oh, ow) = check_params(&p)?;
    let wanted = FilterShape {
        out_channels: p.out_channels,
        kernel_height: p.kernel_height,
        kernel_width: p.kernel_width,
        in_channels: p.in_channels,
        groups: p.groups,
    };
    if weights.shape != wanted {
        bail!(WeightsMismatch, "conv weights were packed for {:?} but the params ask for {wanted:?}", weights.shape);
    }
    let input_len = product("conv input N·H·W·C", &[p.batch, p.in_height, p.in_width, p.in_channels])?;
    if input.data.len() != input_len {
        bail!(
            BufferLength,
            "conv input: {} values for NHWC [{}, {}, {}, {}] (needs {input_len})",
            input.data.len(),
            p.batch,
            p.in_height,
            p.in_width,
            p.in_channels
        );
    }
    let m = product("conv output N·OH·OW", &[p.batch, oh, ow])?;
    if output.rows != m || output.cols != p.out_channels {
        bail!(
            Dimension,
            "conv output is {}×{} but N·OH·OW × OC = {m}×{} (OH = {oh}, OW = {ow})",
            output.rows,
            output.cols,
            p.out_channels
        );
    }
    output.check()?;
    let stage = output_stage(stage, p.out_channels, output.output_type())?;

    if m == 0 || p.out_channels == 0 {
        // No output pixels (batch 0) or channels: nothing to compute or write.
        return Ok(());
    }
    let kernel = weights.kernel;
    let cg = p.in_channels_per_group();
    let ocg = p.out_channels_per_group();
    let k = p.kernel_height * p.kernel_width * cg;
    let pointwise = p.kernel_height == 1
        && p.kernel_width == 1
        && p.stride_height == 1
        && p.stride_width == 1
        && p.pad_top + p.pad_left + p.pad_bottom + p.pad_right == 0;
    let mr = kernel.tile().mr;
    let chunk_rows = (IM2COL_SCRATCH_BYTES / k.max(1) / mr * mr).max(mr);
    let out_stride = output.row_stride;

    let run = |row0: usize, rows: usize, mut out: OutData<'_>| {
        let mut scratch = Vec::new();
        for (g, packed) in weights.groups.iter().enumerate() {
            let gemm = |a: &[u8], a_stride: usize, rows: usize, out: OutData<'_>| {
                driver::gemm(
                    kernel,
                    GemmArgs {
                        m: rows,
                        a,
                        a_stride,
                        a_zp: input.zero_point,
                        b: packed,
                        stage: stage.from_column(g * ocg),
                        out,
                        out_stride,
                    },
                );
            };
            if pointwise {
                // The input rows are the GEMM rows: A starts at this range's first pixel
                // and this group's first channel, with stride C.
                let a = input.data.get(row0 * p.in_channels + g * cg..).unwrap_or(&[]);
                gemm(a, p.in_channels, rows, out.tail(g * ocg));
                continue;
            }
            for r in (0..rows).step_by(chunk_rows) {
                let count = chunk_rows.min(rows - r);
                scratch.resize(count * k, 0);
                im2col(&p, oh, ow, input, g, row0 + r, count, &mut scratch);
                gemm(&scratch, k, count, out.tail(r * out_stride + g * ocg));
            }
        }
    };
    for_row_ranges(m, mr, options.threads, output.into_out_data(), out_stride, run);
    Ok(())
}

/// Gathers the taps of group `g` for output pixels `first..first + count` into `dst`,
/// one row of `KH·KW·C/groups` values per pixel, in `(kh, kw, c)` order. Taps in the
/// padding read as the input zero point.
#[allow(clippy::too_many_arguments)]
fn im2col(
    p: &Conv2dParams,
    oh_total: usize,
    ow_total: usize,
    input: &ConvInput<'_>,
    g: usize,
    first: usize,
    count: usize,
    dst: &mut [u8],
) {
    let cg = p.in_channels_per_group();
    let row_len = p.kernel_height * p.kernel_width * cg;
    for (i, row) in dst.chunks_exact_mut(row_len.max(1)).take(count).enumerate() {
        let pixel = first + i;
        let ow = pixel % ow_total;
        let oh = (pixel / ow_total) % oh_total;
        let b = pixel / (ow_total * oh_total);
        let mut taps = row.chunks_exact_mut(cg.max(1));
        for kh in 0..p.kernel_height {
            let ih =
                (oh * p.stride_height + kh * p.dilation_height).checked_sub(p.pad_top).filter(|&ih| ih < p.in_height);
            for kw in 0..p.kernel_width {
                let iw =
                    (ow * p.stride_width + kw * p.dilation_width).checked_sub(p.pad_left).filter(|&iw| iw < p.in_width);
                let Some(tap) = taps.next() else { return };
                match (ih, iw) {
                    (Some(ih), Some(iw)) => {
                        let at = ((b * p.in_height + ih) * p.in_width + iw) * p.in_channels + g * cg;
                        tap.copy_from_slice(&input.data[at..at + cg]);
                    }
                    _ => tap.fill(input.zero_point),
                }
            }
        }
    }
}
