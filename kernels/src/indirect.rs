//! Indirect convolution: the microkernel reads its activations straight from the NHWC
//! input through offsets, one per output pixel and *run*, so A is never gathered or
//! packed (XNNPACK's IGEMM, after Dukhan, "The Indirect Convolution Algorithm", 2019).
//!
//! A run is a stretch of one output pixel's K that is contiguous in NHWC ([`Runs`]):
//!
//! - **Kernel rows**, when the group is all the channels and the horizontal dilation is
//!   1: the `KW` taps of one kernel row are `KW·C` consecutive bytes, so a pixel has
//!   `KH` runs (`conv1`, C = 3: 7 runs of 21 values instead of 49 taps of 3).
//! - **Taps** otherwise (groups, dilation): each tap's `C/groups` channels, `KH·KW`
//!   runs, for channel counts that are multiples of 4.
//!
//! The kernels read K in groups of 4, so a run of `L` values is read as
//! `L' = ⌈L/4⌉·4` bytes; its last `L' − L` weights are zero
//! ([`PackedB::try_new_runs`]), so whatever those bytes hold adds nothing.
//!
//! ```text
//!  offsets[p·S + s] ─┬─▶ input[(b, ih, iw, c0)..][..L']    in place (most runs)
//!                    └─▶ pad[o − input.len()..][..L']       o ≥ input.len():
//!                        pad: │ zero-point row │ copy │ copy │ …
//! ```
//!
//! A run in a padding row points at the row of zero points, so padded taps add
//! exactly zero as everywhere else in qgemm. A run that crosses the left or right
//! padding (kernel rows), or whose `L'` bytes would pass the end of the input, is
//! copied into the pad buffer with its padded taps as the zero point. Row sums, needed
//! only for nonzero weight zero points, are summed from the runs' `L` real values
//! once per row block.
//!
//! The loop nest, with no K blocking: a tile keeps its sums in registers over all of K,
//! and the output stage runs on them (fused into the tile where the kernel can):
//!
//! ```text
//! for each block of output pixels (rows)
//!     offsets of its runs (copies at the borders; row sums if needed)
//!     for each block of nc output channels
//!         for each column panel, for each tile of mr pixels: Σ over all runs, stage
//! ```
//!
//! **Scratch**: the offsets (8 bytes per run) and the pad buffer of one row block
//! share packed A's room, [`INDIRECT_BYTES`]; [`plan`] makes the row block smaller
//! for deep kernels and declines a convolution whose single tile would not fit.

use std::ops::Range;

use crate::driver::{Position, Scratch, ScratchNeeds, epilogue_args};
use crate::kernel::{IndirectA, IndirectArgs, Kernel};
use crate::output::{OutData, OutputStage, ZeroPoints};
use crate::pack::PackedB;
use crate::rows::{ConvGeometry, Im2col};

/// The most offsets and pad bytes one row block holds: packed A's room
/// ([`crate::driver::A_PACK_BYTES`]), which an indirect convolution does not use.
pub const INDIRECT_BYTES: usize = crate::driver::A_PACK_BYTES;

/// How a pixel's K is cut into runs (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Runs {
    /// One run per kernel row, `KW·C` values.
    KernelRows,
    /// One run per tap, `C/groups` values.
    Taps,
}

/// How one convolution runs indirectly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Plan {
    /// The runs.
    pub runs: Runs,
    /// Runs per output pixel.
    pub segments: usize,
    /// Values per run.
    pub run_len: usize,
    /// K-groups of 4 per run, the padding included.
    pub seg_groups: usize,
    /// Output pixels per row block, a multiple of the tile's rows.
    pub block_rows: usize,
}

impl Plan {
    /// Whether the weights must be packed run by run ([`PackedB::try_new_runs`]):
    /// when a run is not a whole number of K-groups. Otherwise the weights packed for
    /// the convolution as a GEMM serve as they are.
    pub fn needs_run_weights(&self) -> bool {
        !self.run_len.is_multiple_of(4)
    }
}

/// The runs of kernel rows of a convolution with all `channels` in one group and
/// kernel width `kw`: `(runs per kernel, values per run)` for `kh` kernel rows.
pub fn kernel_row_runs(kh: usize, kw: usize, channels: usize) -> (usize, usize) {
    (kh, kw * channels)
}

/// How `kernel` runs this convolution (one group of `group_channels` input channels)
/// indirectly, or `None` where it does not: a kernel without an indirect entry, runs
/// that would waste more than a quarter of K on padding lanes (taps of 3 channels),
/// or a kernel so deep that one tile's runs do not fit [`INDIRECT_BYTES`].
pub fn plan(g: &ConvGeometry, group_channels: usize, kernel: &Kernel) -> Option<Plan> {
    let tile = kernel.tile();
    let can = kernel.has_indirect() || kernel.fast_path().is_some_and(|f| f.has_indirect());
    if !can || tile.kg != 4 || group_channels == 0 {
        return None;
    }
    let (runs, segments, run_len) = if g.dilation_width == 1 && group_channels == g.in_channels {
        let (segments, len) = kernel_row_runs(g.kernel_height, g.kernel_width, group_channels);
        (Runs::KernelRows, segments, len)
    } else if group_channels.is_multiple_of(4) {
        (Runs::Taps, g.kernel_height * g.kernel_width, group_channels)
    } else {
        return None;
    };
    let seg_groups = run_len.div_ceil(4);
    let k = segments.checked_mul(run_len)?;
    let kp = segments.checked_mul(seg_groups * 4)?;
    if kp.checked_mul(4)? > k.next_multiple_of(4).checked_mul(5)? {
        return None;
    }
    // Per row: an offset and, at worst, a copy for every run; plus one zero-point row.
    let per_row = segments.checked_mul(8 + seg_groups * 4)?;
    let room = INDIRECT_BYTES.checked_sub(seg_groups * 4)?;
    let block_rows = (room / per_row / tile.mr * tile.mr).min(kernel.blocking().mc);
    if block_rows == 0 {
        return None;
    }
    Some(Plan { runs, segments, run_len, seg_groups, block_rows })
}

/// One indirect convolution call: `out[m × columns] = stage(Σ (A − a_zp)(B − b_zp))`,
/// A the `m` output pixels' runs.
#[derive(Debug)]
pub struct IndirectGemm<'a> {
    /// Output pixels.
    pub m: usize,
    /// The group's taps, read in place (`max_value` is also the bound of the bytes
    /// a run's padding lanes read, all of them input values or zero points).
    pub conv: Im2col<'a>,
    /// How it runs ([`plan`]).
    pub plan: Plan,
    /// The weights: packed run by run where [`Plan::needs_run_weights`], else as for
    /// the GEMM.
    pub b: &'a PackedB,
    /// The output stage, from column 0 of B.
    pub stage: OutputStage<'a>,
    /// The columns of B to compute.
    pub columns: Range<usize>,
    /// The output: a window of `m` rows by `columns.len()` columns.
    pub out: OutData<'a>,
}

/// Whether `kernel` runs an indirect convolution with weights `b` and activations at
/// most `max_value`: it, or its fast path where that is exact, has an indirect entry.
pub fn runs_on(kernel: &Kernel, b: &PackedB, max_value: u8) -> bool {
    // 4-bit weights are decoded a block at a time by the GEMM driver; the indirect
    // kernels read all of K of 8-bit panels.
    !b.is_nibbles() && kernel.for_block(b, || max_value).has_indirect()
}

/// The most rows and columns of one block of [`gemm_in`], rounded up to whole tiles.
fn block_sizes(kernel: &Kernel, m: usize, plan: &Plan, columns: &Range<usize>) -> (usize, usize) {
    let (tile, blocking) = (kernel.tile(), kernel.blocking());
    let first_panel_col = columns.start / tile.nr * tile.nr;
    let mc_max = plan.block_rows.min(m.div_ceil(tile.mr) * tile.mr);
    let nc_max = blocking.nc.min(columns.end.saturating_sub(first_panel_col).div_ceil(tile.nr) * tile.nr);
    (mc_max, nc_max)
}

/// The scratch [`gemm_in`] grows to for `m` output pixels over `columns`, by `plan`
/// (see [`ScratchNeeds`]): the run offsets, the pad runs (in packed A's room), the
/// accumulators and the row sums of one block.
pub fn gemm_needs(kernel: &Kernel, m: usize, plan: &Plan, columns: Range<usize>) -> ScratchNeeds {
    if m == 0 || columns.is_empty() {
        return ScratchNeeds::default();
    }
    let (mc_max, nc_max) = block_sizes(kernel, m, plan, &columns);
    ScratchNeeds {
        offsets: mc_max * plan.segments,
        a_pack: plan.seg_groups * 4 * (1 + mc_max * plan.segments),
        acc: mc_max * nc_max,
        row_sums: mc_max,
        ..ScratchNeeds::default()
    }
}

/// Runs an indirect convolution on the calling thread, in `scratch`.
///
/// # Panics
/// If the weights were packed for another tile or another plan, the kernel cannot
/// run it ([`runs_on`]), or a buffer is shorter than the shapes say (the public crate
/// validates all of this first).
pub fn gemm_in(kernel: &Kernel, args: IndirectGemm<'_>, scratch: &mut Scratch) {
    let IndirectGemm { m, conv, plan, b, stage, columns, mut out } = args;
    let tile = kernel.tile();
    let blocking = kernel.blocking();
    assert!(b.fits(tile) && !b.is_nibbles(), "weights packed for another tile, or 4-bit");
    assert_eq!(b.k_padded(), plan.segments * plan.seg_groups * 4, "weights packed for another plan");
    assert!(columns.start <= columns.end && columns.end <= b.n(), "columns outside the weights");
    assert!(out.rows() >= m && out.cols() >= columns.len(), "output window smaller than the product");
    if m == 0 || columns.is_empty() {
        return;
    }
    let block_kernel = kernel.for_block(b, || conv.max_value);
    assert!(block_kernel.has_indirect(), "a kernel without an indirect entry");
    let (j0, n) = (columns.start, columns.end);
    let first_panel_col = j0 / tile.nr * tile.nr;
    let (_, nc_max) = block_sizes(kernel, m, &plan, &columns);
    let run_bytes = plan.seg_groups * 4;
    let (offsets, pad, acc, row_sums) = scratch.indirect(&gemm_needs(kernel, m, &plan, columns.clone()));
    let zero_points =
        ZeroPoints { a_zp: i32::from(conv.zero_point), col_offsets: b.col_offsets(), b_zp: b.zero_points() };
    let sum_rows = b.zero_points().iter().any(|&z| z != 0);
    // The zero-point row: `L` zero points, then padding lanes (zero weights).
    pad[..plan.run_len].fill(conv.zero_point);
    pad[plan.run_len..run_bytes].fill(0);

    // LOOP 3: blocks of output pixels.
    for ic in (0..m).step_by(plan.block_rows) {
        let rows = plan.block_rows.min(m - ic);
        let offsets = &mut offsets[..rows * plan.segments];
        let pad_len = fill(&conv, &plan, ic, rows, offsets, pad);
        row_sums.fill(0);
        if sum_rows {
            sum_runs(kernel, &conv, &plan, offsets, &pad[..pad_len], &mut row_sums[..rows]);
        }
        // LOOP 2: blocks of output channels.
        for jc in (first_panel_col..n).step_by(blocking.nc) {
            let cols = blocking.nc.min(n - jc);
            let skip = j0.saturating_sub(jc);
            let args = IndirectArgs {
                a: IndirectA {
                    input: conv.input,
                    pad: &pad[..pad_len],
                    offsets,
                    segments: plan.segments,
                    seg_groups: plan.seg_groups,
                },
                b: &b.data()[(jc / tile.nr) * b.panel_stride()..],
                b_panel_stride: b.panel_stride(),
                rows,
                col_panels: cols.div_ceil(tile.nr),
                cols,
                acc,
                acc_stride: nc_max,
            };
            if cfg!(debug_assertions) {
                // What `fill` guarantees, checked where it costs nothing that matters
                // (debug builds and the test profile).
                args.a.check(rows);
            }
            // LOOP 1 and the microkernel: every tile over all of K, in the kernel.
            let at = Position { r0: 0, rows, ic, jc, j0, skip, cols };
            if skip > 0 {
                // A block that starts before `columns.start` (a partition cut inside a
                // panel): through the accumulators, then the stage from the first
                // column to store.
                // SAFETY: `fill` wrote every offset of these rows, each addressing `L'`
                // bytes of the input or of the pad buffer (its contract), and the pad
                // slice handed over holds every byte it used.
                unsafe { block_kernel.indirect_block_unchecked(args) };
                kernel.epilogue(epilogue_args(acc, nc_max, row_sums, at, zero_points, stage, &mut out));
            } else {
                let stage_args = epilogue_args(&[], nc_max, row_sums, at, zero_points, stage, &mut out);
                // SAFETY: as for `indirect_block_unchecked` above.
                unsafe { block_kernel.indirect_with_stage_unchecked(args, stage_args) };
            }
        }
    }
}

/// The pad buffer being filled: the zero-point row, then copies of runs.
struct Copies<'p> {
    pad: &'p mut [u8],
    used: usize,
    len: usize,
    run_bytes: usize,
    input_len: usize,
}

impl Copies<'_> {
    /// A new copy of a run, whose `len` values `parts` writes (the padding lanes are
    /// 0); returns its offset.
    fn copy(&mut self, parts: impl FnOnce(&mut [u8])) -> usize {
        let at = self.used;
        let dst = &mut self.pad[at..at + self.run_bytes];
        parts(&mut dst[..self.len]);
        dst[self.len..].fill(0);
        self.used += self.run_bytes;
        self.input_len + at
    }

    /// Whether the `L'` bytes at `at` lie in the input.
    fn fits(&self, input: &[u8], at: usize) -> bool {
        input.len().checked_sub(at).is_some_and(|rest| rest >= self.run_bytes)
    }

    /// The run at `at` of `input`: in place where its `L'` bytes lie in the input, else
    /// a copy of its `L` values.
    fn run(&mut self, input: &[u8], at: usize) -> usize {
        if self.fits(input, at) {
            at
        } else {
            let len = self.len;
            self.copy(|d| d.copy_from_slice(&input[at..at + len]))
        }
    }
}

/// Writes the offsets of rows `row0..row0 + rows` (`rows × segments`), copying the runs
/// that cannot be read in place into `pad` after its zero-point row; returns the pad
/// bytes used. Every offset it writes addresses `L'` bytes of the input or of `pad`
/// (checked here, run by run: `Copies::run`), which [`gemm_in`] relies on.
///
/// Pixels are walked an output row at a time: the kernel rows inside the image are
/// one range per output row, and the columns whose taps all lie inside the image
/// (most of them) take their offsets by one add per run.
#[inline(never)] // its loops keep their registers (inlined, they spill)
fn fill(conv: &Im2col<'_>, plan: &Plan, row0: usize, rows: usize, offsets: &mut [usize], pad: &mut [u8]) -> usize {
    let g = &conv.geometry;
    let (input, cg, c) = (conv.input, conv.group_channels, g.in_channels);
    let run_bytes = plan.seg_groups * 4;
    let mut pad = Copies { pad, used: run_bytes, len: plan.run_len, run_bytes, input_len: input.len() };
    let zero_row = input.len();
    let (sw, dw, kw_n) = (g.stride_width, g.dilation_width, g.kernel_width);
    // Output columns `inner` have every kernel column inside the image.
    let inner = {
        let lo = g.pad_left.div_ceil(sw);
        let reach = (kw_n - 1) * dw;
        let hi = (g.in_width + g.pad_left).checked_sub(reach).map_or(0, |x| x.div_ceil(sw));
        lo..hi.min(g.out_width)
    };
    // Input rows are `row_step` apart; a kernel row `g.dilation_height` input rows on.
    let row_step = g.in_width * c;
    let kh_step = g.dilation_height * row_step;
    let segs = plan.segments;
    let block0 = conv.first_pixel + row0;
    let (mut pixel, end) = (block0, block0 + rows);
    while pixel < end {
        let (b, oh, ow0) = g.pixel(pixel);
        let n = (g.out_width - ow0).min(end - pixel);
        let r0 = pixel - block0; // the block row of output column ow0
        pixel += n;
        // The kernel rows inside the image for this output row, and the first one's
        // input row.
        let top = oh * g.stride_height;
        let kh_lo = g.pad_top.saturating_sub(top).div_ceil(g.dilation_height);
        let kh_hi = (g.in_height + g.pad_top).saturating_sub(top).div_ceil(g.dilation_height).min(g.kernel_height);
        let kh_lo = kh_lo.min(kh_hi);
        let ih_lo = top + kh_lo * g.dilation_height - g.pad_top.min(top + kh_lo * g.dilation_height);
        // Offset of input pixel (ih of kernel row `kh_lo`, 0), channel 0 of the group.
        let base = (b * g.in_height + ih_lo) * row_step + conv.channel0;
        let (inner_lo, inner_hi) = (inner.start.clamp(ow0, ow0 + n), inner.end.clamp(ow0, ow0 + n));
        // The pixels left to the general path below: all, or those either side of the
        // inner ones.
        let (mut general, mut rest) = (ow0..ow0 + n, 0..0);
        if plan.runs == Runs::KernelRows && inner_lo < inner_hi {
            // The pixels inside the image horizontally, all at once: each kernel row
            // inside the image is one stretch of the input (dilation 1), a pixel's runs
            // `kh_step` apart and the pixels `sw · C` apart; the runs rise, so the
            // last one alone can pass the input's end.
            let first = base + (inner_lo * sw - g.pad_left) * c;
            let rows_inner = &mut offsets[(r0 + inner_lo - ow0) * segs..(r0 + inner_hi - ow0) * segs];
            if kh_lo == 0 && kh_hi == segs {
                // Every kernel row inside the image (most output rows): an arithmetic
                // progression, without a branch per run.
                for (j, row) in rows_inner.chunks_exact_mut(segs).enumerate() {
                    let at = first + j * sw * c;
                    for (kh, o) in row.iter_mut().enumerate() {
                        *o = at + kh * kh_step;
                    }
                }
            } else {
                for (j, row) in rows_inner.chunks_exact_mut(segs).enumerate() {
                    let at = first + j * sw * c;
                    for (kh, o) in row.iter_mut().enumerate() {
                        *o = if kh >= kh_lo && kh < kh_hi { at + (kh - kh_lo) * kh_step } else { zero_row };
                    }
                }
            }
            let last = first + (inner_hi - inner_lo - 1) * sw * c + kh_hi.saturating_sub(kh_lo + 1) * kh_step;
            if kh_hi > kh_lo && !pad.fits(input, last) {
                for o in rows_inner.iter_mut().filter(|o| **o != zero_row) {
                    *o = pad.run(input, *o);
                }
            }
            (general, rest) = (ow0..inner_lo, inner_hi..ow0 + n);
        }
        for ow in general.chain(rest) {
            let row = &mut offsets[(r0 + ow - ow0) * segs..][..segs];
            let inside = inner.contains(&ow);
            let iw0 = (ow * sw).wrapping_sub(g.pad_left);
            match plan.runs {
                Runs::KernelRows => {
                    // A pixel whose kernel rows cross the left or right padding: copies.
                    for (kh, o) in row.iter_mut().enumerate() {
                        if kh < kh_lo || kh >= kh_hi {
                            *o = zero_row;
                            continue;
                        }
                        let at = base + (kh - kh_lo) * kh_step;
                        *o = if inside {
                            pad.run(input, at + iw0 * c)
                        } else {
                            pad.copy(|d| {
                                for (kw, tap) in d.chunks_exact_mut(cg).enumerate() {
                                    match g.input_col(ow, kw) {
                                        Some(iw) => tap.copy_from_slice(&input[at + iw * c..][..cg]),
                                        None => tap.fill(conv.zero_point),
                                    }
                                }
                            })
                        };
                    }
                }
                Runs::Taps => {
                    for (kh, taps) in row.chunks_exact_mut(kw_n).enumerate() {
                        if kh < kh_lo || kh >= kh_hi {
                            taps.fill(zero_row);
                            continue;
                        }
                        let at = base + (kh - kh_lo) * kh_step;
                        for (kw, o) in taps.iter_mut().enumerate() {
                            let iw = if inside { Some(iw0 + kw * dw) } else { g.input_col(ow, kw) };
                            *o = match iw {
                                Some(iw) => pad.run(input, at + iw * c),
                                None => zero_row,
                            };
                        }
                    }
                }
            }
        }
    }
    pad.used
}

/// Each row's sum of its runs' real values, wrapping (with the kernel's row sum).
fn sum_runs(kernel: &Kernel, conv: &Im2col<'_>, plan: &Plan, offsets: &[usize], pad: &[u8], row_sums: &mut [i32]) {
    let (input, len) = (conv.input, plan.run_len);
    for (sum, row) in row_sums.iter_mut().zip(offsets.chunks_exact(plan.segments)) {
        *sum = row.iter().fold(0i32, |s, &o| {
            let run = if o < input.len() { &input[o..o + len] } else { &pad[o - input.len()..][..len] };
            s.wrapping_add(kernel.row_sum(run) as i32)
        });
    }
}
