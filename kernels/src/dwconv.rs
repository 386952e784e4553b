//! Depthwise convolution (groups = input channels): its own weight packing, loop nest
//! and kernels, because as a GEMM it would be N = 1 per group.
//!
//! Every output channel is a separate dot product over `KH × KW` taps, so the
//! kernels vectorize across channels (NHWC keeps them contiguous) and multiply in
//! i16 pairs with `vpmaddwd`-style instructions: each i32 lane holds two taps of one
//! channel, `(x(kh, kw), x(kh, kw + 1))` against `(w(kh, kw), w(kh, kw + 1))`. The
//! weights are stored with their zero point subtracted, the activations as they are
//! (a tap in the padding reads the input zero point), so the accumulator is
//! `Σ x·(w − w_zp)` and the input zero point costs one per-channel constant,
//! `−x_zp · Σ (w − w_zp)`, added with the bias: no row sums. Every x lies in [0, 255]
//! and every weight in [−255, 255], every product in ±65025 and every pair sum in
//! ±130050, so the i16 multiply is exact and only the i32 sum can wrap, as the
//! reference's does. An odd KW pairs its last tap with a zero weight.
//!
//! **Pair rows.** For one input row and a block of channels, the pair row holds, at
//! each position `p` of the block's column span, the pair `(x[iw], x[iw + dw])` of
//! every channel, `iw = iw0 + p` (outside the image: the input zero point). Output column `ow` of the
//! tile reads kernel-column pair `j` at position `ow·sw + 2j·dw`, for any stride and
//! dilation. A row is built once and kept while the next output rows read it (a cache
//! of `KH` slots keyed by input row), so each input value is widened about once per
//! block of channels, not once per tap. Where every read position is a multiple of a
//! step ([`position_step`]: 2 at stride 2), a pair row holds only those positions, so
//! a stride-2 row builds half the pairs (+34% on a stride-2 3×3 depthwise, Zen 4):
//!
//! ```text
//!  pair row (i32 lanes, lo = x[iw], hi = x[iw + dw], as i16), chunk-major:
//!  ┌ chunk 0 (channels 0..8) ──────────────────┐┌ chunk 1 (channels 8..16) ── …
//!  │ p 0: [c0 pair][c1 pair] … [c7 pair]       ││ p 0: …
//!  │ p 1: …                   (span positions) ││
//!  └───────────────────────────────────────────┘└──────────
//! ```
//!
//! Kernels that process two chunks per vector ([`DwKernel::lanes`] 16) lay each pair
//! of chunks out position-major instead, 16 lanes per position ([`lane_at`]), in the
//! same room; every pair row starts on a cache line.
//!
//! **Packed weights**, once: chunks of 8 output channels, then kernel rows, then pairs
//! `j` of kernel columns, 8 i32 lanes each `(w(kh, 2j) − zp, w(kh, 2j + 1) − zp)`;
//! channels past OC and the partner of an odd last column are 0.
//!
//! **Scratch**: the pair rows of `KH` input rows plus one padding row, and the i32
//! accumulators of one tile of output columns, are bounded by [`DW_PAIRS_BYTES`] and
//! [`DW_ACC_BYTES`]: a wide image or many channels make the channel block and the
//! column tile smaller, never the scratch larger ([`plan`]).

use std::collections::TryReserveError;
use std::ops::Range;

use crate::driver::{DwScratch, Scratch, ScratchNeeds};
use crate::output::{EpilogueArgs, OutData, OutView, OutputStage, Param, Requant, Scheme, ZeroPoints, epilogue_scalar};
use crate::rows::ConvGeometry;

/// Channels per chunk: one 256-bit vector of i32 lanes.
pub const LANES: usize = 8;

/// The most pair rows one call holds, in bytes.
pub const DW_PAIRS_BYTES: usize = 224 << 10;

/// The most accumulators one call holds, in bytes.
pub const DW_ACC_BYTES: usize = 256 << 10;

/// The largest channel block, in chunks (1024 channels), which bounds the per-lane
/// bias and scale of the fused output.
const MAX_CHUNKS: usize = 128;

/// Lanes per cache line: pair rows start on one, so that a vector of 8 or 16 lanes at
/// any position never straddles two.
const ALIGN_LANES: usize = 16;

/// The narrowest kernel whose rows are read as quads, where the kernel and the weights
/// allow ([`DwKernel::with_quads`]). A quad row costs a second pass over the pair row;
/// at 5 columns, 2 quads instead of 3 pairs per kernel row repay it (+41% on a 5×5,
/// AMD EPYC Zen 4), at 3 columns 1 quad instead of 2 pairs did not (−3% on a 3×3,
/// −11% on a stride-2 3×3).
pub const QUAD_MIN_WIDTH: usize = 5;

/// The tallest kernel the depthwise path takes (taller ones run as grouped GEMMs).
pub const DW_MAX_KERNEL_HEIGHT: usize = 256;

/// Depthwise weights, packed (layout in the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackedDw {
    out_channels: usize,
    kernel_height: usize,
    kernel_width: usize,
    data: Vec<i32>,
    /// The same weights as quads for kernels that take them ([`DwKernel::with_quads`]),
    /// packed when every zero point is 0 (so each weight is its i8 byte): chunks, kernel
    /// rows, quads `j` of kernel columns, 8 i32 lanes each holding the bytes
    /// `(w(kh, 4j), w(kh, 4j + 2), w(kh, 4j + 1), w(kh, 4j + 3))` (0 past KW), the order
    /// of a quad row's taps.
    quads: Option<Vec<i32>>,
    /// `−Σ_taps (w − w_zp)` per channel (times the input zero point, the activations'
    /// correction), padded to whole chunks.
    neg_sums: Vec<i32>,
    zeros: Vec<i32>,
}

impl PackedDw {
    /// Packs OHWI depthwise weights `[OC][KH][KW][1]` with one zero point (per tensor)
    /// or OC (per channel).
    ///
    /// # Errors
    /// When the packed buffer cannot be allocated.
    ///
    /// # Panics
    /// If the length is not `OC·KH·KW` or the zero points are neither 1 nor OC.
    pub fn try_new(
        data: &[i8],
        out_channels: usize,
        kernel_height: usize,
        kernel_width: usize,
        zero_points: &[i32],
    ) -> Result<PackedDw, TryReserveError> {
        let (oc, kh, kw) = (out_channels, kernel_height, kernel_width);
        assert_eq!(data.len(), oc * kh * kw, "depthwise weights length");
        assert!(zero_points.len() == 1 || zero_points.len() == oc, "zero points");
        let pairs = kw.div_ceil(2);
        let chunks = oc.div_ceil(LANES);
        let mut packed = zeroed::<i32>(chunks * kh * pairs * LANES)?;
        let mut neg_sums = zeroed::<i32>(chunks * LANES)?;
        for (o, taps) in data.chunks_exact((kh * kw).max(1)).enumerate().take(oc) {
            let zp = zero_points[if zero_points.len() == 1 { 0 } else { o }];
            neg_sums[o] = -taps.iter().map(|&t| i32::from(t) - zp).sum::<i32>();
            let (chunk, lane) = (o / LANES, o % LANES);
            for r in 0..kh {
                for j in 0..pairs {
                    let w = |col: usize| if col < kw { i32::from(taps[r * kw + col]) - zp } else { 0 };
                    packed[((chunk * kh + r) * pairs + j) * LANES + lane] = pair(w(2 * j), w(2 * j + 1));
                }
            }
        }
        let zeros = zeroed::<i32>(chunks * LANES)?;
        let quads = if zero_points.iter().all(|&z| z == 0) {
            let n = kw.div_ceil(4);
            let mut quads = zeroed::<i32>(chunks * kh * n * LANES)?;
            for (o, taps) in data.chunks_exact((kh * kw).max(1)).enumerate().take(oc) {
                let (chunk, lane) = (o / LANES, o % LANES);
                for r in 0..kh {
                    for j in 0..n {
                        let w = |col: usize| if col < kw { taps[r * kw + col] as u8 } else { 0 };
                        let bytes = [w(4 * j), w(4 * j + 2), w(4 * j + 1), w(4 * j + 3)];
                        quads[((chunk * kh + r) * n + j) * LANES + lane] = i32::from_le_bytes(bytes);
                    }
                }
            }
            Some(quads)
        } else {
            None
        };
        Ok(PackedDw { out_channels: oc, kernel_height: kh, kernel_width: kw, data: packed, quads, neg_sums, zeros })
    }

    /// Bytes held.
    pub fn heap_size(&self) -> usize {
        let quads = self.quads.as_ref().map_or(0, Vec::capacity);
        4 * (self.data.capacity() + quads + self.neg_sums.capacity() + self.zeros.capacity())
    }

    fn pairs(&self) -> usize {
        self.kernel_width.div_ceil(2)
    }

    fn chunks(&self) -> usize {
        self.out_channels.div_ceil(LANES)
    }
}

/// Two i16 values in one i32 lane: `lo` in the low half (the first in memory).
#[inline(always)]
pub fn pair(lo: i32, hi: i32) -> i32 {
    (lo & 0xffff) | (hi << 16)
}

fn zeroed<T: Clone + Default>(len: usize) -> Result<Vec<T>, TryReserveError> {
    let mut v = Vec::new();
    v.try_reserve_exact(len)?;
    v.resize(len, T::default());
    Ok(v)
}

/// How a call is cut so that its scratch stays bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Chunks of 8 channels per block.
    pub chunks: usize,
    /// Output columns per tile.
    pub cols: usize,
}

impl Plan {
    /// Positions of a tile's pair rows: those that pairs are read from, and for a
    /// kernel wide enough for quads ([`QUAD_MIN_WIDTH`]), also those that quads are
    /// formed from (see [`DwKernel::with_quads`]; the same plan serves both).
    fn span(&self, g: &ConvGeometry) -> usize {
        let (kw, dw) = (g.kernel_width, g.dilation_width);
        let pairs = 2 * (kw.div_ceil(2) - 1) * dw;
        let quads = if kw >= QUAD_MIN_WIDTH { (4 * (kw.div_ceil(4) - 1) + 2) * dw } else { 0 };
        ((self.cols - 1) * g.stride_width + pairs.max(quads)) / position_step(g) + 1
    }

    /// Lanes of one slot (one pair row): whole cache lines, so that every slot starts
    /// on one.
    fn slot_lanes(&self, g: &ConvGeometry) -> usize {
        self.span(g).saturating_mul(self.chunks * LANES).next_multiple_of(ALIGN_LANES)
    }

    /// Bytes of pair rows: `KH` rows and the zero row, and the lanes skipped to align
    /// the first.
    fn pairs_bytes(&self, g: &ConvGeometry) -> usize {
        self.slot_lanes(g).saturating_mul(g.kernel_height + 1).saturating_add(ALIGN_LANES - 1).saturating_mul(4)
    }

    fn acc_bytes(&self) -> usize {
        self.cols.saturating_mul(self.chunks * LANES * 4)
    }
}

/// Input columns from one pair-row position to the next: the largest step every read
/// position is a multiple of, `gcd(stride, 2·dilation)` horizontally. Output column
/// `ow` reads pair `j` at input column `ow·sw + 2j·dw` (from the tile's first), so at
/// stride 2 only every other column starts a pair that is read, and the pair rows hold
/// just those: half the positions to build.
pub fn position_step(g: &ConvGeometry) -> usize {
    let (mut a, mut b) = (g.stride_width, 2 * g.dilation_width);
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

/// The largest channel block and column tile whose scratch fits the bounds, or
/// `None` for a kernel taller than [`DW_MAX_KERNEL_HEIGHT`] or one whose pair rows do
/// not fit even for one chunk and one column; the caller then runs the convolution
/// as grouped GEMMs.
pub fn plan(g: &ConvGeometry, out_channels: usize) -> Option<Plan> {
    let fits = |p: &Plan| p.pairs_bytes(g) <= DW_PAIRS_BYTES && p.acc_bytes() <= DW_ACC_BYTES;
    if g.kernel_height > DW_MAX_KERNEL_HEIGHT || g.out_width == 0 {
        return None;
    }
    let mut p = Plan { chunks: out_channels.div_ceil(LANES).max(1), cols: g.out_width };
    // Halve the channel block down to 4 chunks first (32 channels keep the pair rows
    // long enough to stream), then the column tile, then the channel block again.
    // (Blocks small enough for L1 measured slower: more, shorter calls.)
    while (!fits(&p) || p.chunks > MAX_CHUNKS) && p.chunks > 4 {
        p.chunks = p.chunks.div_ceil(2);
    }
    while !fits(&p) && p.cols > 8 {
        p.cols = p.cols.div_ceil(2);
    }
    while !fits(&p) && p.chunks > 1 {
        p.chunks = p.chunks.div_ceil(2);
    }
    while !fits(&p) && p.cols > 1 {
        p.cols = p.cols.div_ceil(2);
    }
    fits(&p).then_some(p)
}

/// One call of a build function: the pair row of one input row for a block of
/// channels.
#[derive(Debug)]
pub struct BuildArgs<'a> {
    /// The input row: `in_width × in_channels` values.
    pub input_row: &'a [u8],
    /// Input channels (the row's pixel stride).
    pub in_channels: usize,
    /// Output channels per input channel (OC / C).
    pub multiplier: usize,
    /// The block's first output channel (a multiple of [`LANES`]).
    pub channel0: usize,
    /// Output channels in all.
    pub out_channels: usize,
    /// Chunks in the block.
    pub chunks: usize,
    /// The input column of position 0 (negative in the left padding).
    pub iw0: isize,
    /// Positions.
    pub span: usize,
    /// The distance between the two taps of a pair (the horizontal dilation).
    pub dilation: usize,
    /// Input columns from one position to the next ([`position_step`]).
    pub step: usize,
    /// The input zero point.
    pub zero_point: u8,
    /// The destination: `chunks × span × LANES` lanes.
    pub dst: &'a mut [i32],
    /// 0 for a pair row; else build quads, `quad_offset` positions apart
    /// (see [`DwKernel::with_quads`]; kernels [`with_quads`](DwKernel::with_quads) only).
    pub quad_offset: usize,
}

/// One call of a row function: one tile of one output row, for a block of channels.
#[derive(Debug)]
pub struct RowArgs<'a> {
    /// Pair rows, each `chunks × span × LANES` lanes.
    pub pair_rows: &'a [i32],
    /// Where in `pair_rows` the pair row of each kernel row `0..KH` starts.
    pub row_at: &'a [usize],
    /// Positions per pair row.
    pub span: usize,
    /// The block's packed weights: `chunks × KH × pairs × LANES` lanes.
    pub weights: &'a [i32],
    /// Kernel-column pairs, `ceil(KW / 2)`; or with `quads`, quads, `ceil(KW / 4)`.
    pub pairs: usize,
    /// The rows hold quads and the weights are [`PackedDw`]'s quads (kernels
    /// [`with_quads`](DwKernel::with_quads) only); `pair_step` is then the positions
    /// from one quad to the next.
    pub quads: bool,
    /// Positions from one output column to the next (the horizontal stride over the
    /// [`position_step`]).
    pub stride: usize,
    /// Positions from one kernel-column pair to the next (twice the horizontal
    /// dilation over the [`position_step`]).
    pub pair_step: usize,
    /// Chunks in the block.
    pub chunks: usize,
    /// The first output column, relative to the tile (position `col0·stride`).
    pub col0: usize,
    /// Output columns to compute.
    pub cols: usize,
    /// Where the results go.
    pub out: RowOut<'a>,
}

/// Where a row function puts its results.
#[derive(Debug)]
pub enum RowOut<'a> {
    /// The accumulators, for the generic epilogue: column `i`, lane `c` at
    /// `i·stride + c`.
    Acc {
        /// The accumulators.
        acc: &'a mut [i32],
        /// Distance between columns (at least `chunks × LANES`).
        stride: usize,
    },
    /// Bias and Float requantization fused in registers (kernels that
    /// [`fuses_float`](DwKernel::fuses_float)): `q = clamp(round((acc + bias) · scale),
    /// lo, hi) + zero_point` as the reference computes it, stored as bytes.
    Float(FloatOut<'a>),
}

/// The fused Float output of a channel block.
#[derive(Debug)]
pub struct FloatOut<'a> {
    /// Bias per lane (`chunks × LANES`; 0 past the real channels).
    pub bias: &'a [i32],
    /// Scale per lane (`chunks × LANES`).
    pub scale: &'a [f32],
    /// `min − zero_point`.
    pub lo: f32,
    /// `max − zero_point`.
    pub hi: f32,
    /// The output zero point.
    pub zero_point: i32,
    /// i8 output (else u8).
    pub signed: bool,
    /// The bytes: output column `i`, channel `c` at element `(i, c)`; the window's
    /// columns are the channels to store.
    pub out: OutView<'a, u8>,
}

impl RowArgs<'_> {
    fn check(&self) {
        let lanes = self.chunks * LANES;
        assert!(self.row_at.iter().all(|&at| self.pair_rows.len() >= at + lanes * self.span), "pair rows too short");
        assert!(self.weights.len() >= lanes * self.row_at.len() * self.pairs, "weights too short");
        if self.cols > 0 && self.pairs > 0 {
            let last = (self.col0 + self.cols - 1) * self.stride + (self.pairs - 1) * self.pair_step;
            // A quad at position p was formed from p and p + pair_step / 2.
            let formed = if self.quads { self.span.saturating_sub(self.pair_step / 2) } else { self.span };
            assert!(last < formed, "positions beyond the span");
            match &self.out {
                RowOut::Acc { acc, stride } => {
                    assert!(*stride >= lanes && acc.len() >= (self.cols - 1) * stride + lanes)
                }
                RowOut::Float(f) => {
                    assert!(f.bias.len() >= lanes && f.scale.len() >= lanes);
                    assert!(f.out.cols() <= lanes && f.out.rows() >= self.cols, "fused output window");
                }
            }
        }
    }
}

impl BuildArgs<'_> {
    fn check(&self) {
        assert!(self.channel0.is_multiple_of(LANES) && self.multiplier > 0);
        assert!(self.dst.len() >= self.chunks * self.span * LANES, "pair row too short");
        assert!(self.quad_offset < self.span.max(1), "quad offset beyond the span");
        assert_eq!(self.input_row.len() % self.in_channels.max(1), 0);
        assert!(self.out_channels <= self.in_channels * self.multiplier);
    }
}

/// Builds a pair row; see [`BuildArgs`].
///
/// # Safety
/// The CPU must support the instructions it was compiled for (see [`DwKernel::new`]).
pub type BuildFn = unsafe fn(BuildArgs<'_>);

/// Accumulates a row tile; see [`RowArgs`].
///
/// # Safety
/// As for [`BuildFn`].
pub type RowFn = unsafe fn(RowArgs<'_>);

/// One ISA's depthwise implementation.
#[derive(Clone, Copy, Debug)]
pub struct DwKernel {
    name: &'static str,
    build: BuildFn,
    row: RowFn,
    fuses_float: bool,
    lanes: usize,
    quads: bool,
}

impl DwKernel {
    /// Describes a kernel.
    ///
    /// # Safety
    /// `build` and `row` must be sound to call on this CPU with arguments that satisfy
    /// [`BuildArgs`] and [`RowArgs`] (as their `check`s assert), and touch memory only
    /// through the slices they get.
    pub const unsafe fn new(name: &'static str, build: BuildFn, row: RowFn) -> DwKernel {
        DwKernel { name, build, row, fuses_float: false, lanes: LANES, quads: false }
    }

    /// The same kernel, declaring that it processes chunks in pairs, 16 channels per
    /// vector, with pair rows in [`lane_at`]'s 16-lane layout.
    pub const fn with_wide_vectors(mut self) -> DwKernel {
        self.lanes = 2 * LANES;
        self
    }

    /// Channels per vector: 8, or 16 for a kernel that processes chunks in pairs (its
    /// pair rows use [`lane_at`]'s 16-lane layout). Channel ranges that start at a
    /// multiple of it keep a block's pairs of chunks whole.
    pub fn lanes(&self) -> usize {
        self.lanes
    }

    /// The same kernel, declaring that `row` also takes [`RowOut::Float`].
    pub const fn with_fused_float(mut self) -> DwKernel {
        self.fuses_float = true;
        self
    }

    /// The same kernel, declaring that `build` forms quad rows where
    /// [`BuildArgs::quad_offset`] asks, and `row` reads them with [`RowArgs::quads`]: 4
    /// taps per lane, u8 × i8 (`vpdpbusd`), for weights whose zero points are all 0.
    ///
    /// A quad row is a pair row built over all `span` positions and then turned, in
    /// place, into quads: the lane of each position `p < span − offset` becomes
    /// `P[p] | P[p + offset] << 8`, whose bytes are `(x[iw], x[iw + 2·dw], x[iw + dw],
    /// x[iw + 3·dw])` for `offset` the positions of `2·dw` input columns (a pair lane
    /// holds two u8 values zero-extended to i16, so the shifted pair fills the zero
    /// bytes); ascending `p` reads `p + offset` before it is overwritten. [`PackedDw`]'s
    /// quads hold the weights in the same order.
    pub const fn with_quads(mut self) -> DwKernel {
        self.quads = true;
        self
    }

    /// Whether `row` takes [`RowOut::Float`].
    pub fn fuses_float(&self) -> bool {
        self.fuses_float
    }

    /// The kernel's name, as in `dw8c2-avx2-madd`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    fn build(&self, args: BuildArgs<'_>) {
        args.check();
        assert!(self.quads || args.quad_offset == 0, "this kernel does not build quads");
        // SAFETY: the kernel exists, so its instructions run here, and the arguments
        // were just checked.
        unsafe { (self.build)(args) }
    }

    fn row(&self, args: RowArgs<'_>) {
        args.check();
        assert!(self.fuses_float || matches!(args.out, RowOut::Acc { .. }), "this kernel does not fuse");
        assert!(self.quads || !args.quads, "this kernel does not read quads");
        // SAFETY: as in `build`.
        unsafe { (self.row)(args) }
    }
}

/// One depthwise convolution call over output pixels `first_pixel..first_pixel + pixels`.
#[derive(Debug)]
pub struct DwArgs<'a> {
    /// The whole NHWC input.
    pub input: &'a [u8],
    /// The shape; `in_channels` is the number of groups.
    pub geometry: ConvGeometry,
    /// The input zero point.
    pub zero_point: u8,
    /// The packed weights.
    pub weights: &'a PackedDw,
    /// The first output pixel.
    pub first_pixel: usize,
    /// Output pixels.
    pub pixels: usize,
    /// The output stage, from channel 0.
    pub stage: OutputStage<'a>,
    /// The output channels to compute, any range within `0..OC` (a task of a 2-D
    /// partition); usually all of them.
    pub channels: Range<usize>,
    /// The output: a window of `pixels` rows by `channels.len()` columns, where pixel
    /// `first_pixel + i`, channel `channels.start + c` is element `(i, c)`.
    pub out: OutData<'a>,
}

/// Bias and Float requantization into bytes run inside the row kernel where it can
/// (the requantization and its scale, then); everything else through the accumulators
/// and the generic epilogue.
fn fused_stage<'s>(
    kernel: &DwKernel,
    stage: &OutputStage<'s>,
    out: &OutData<'_>,
) -> Option<(Requant<'s>, Param<'s, f32>)> {
    match (&stage.requant, out) {
        (Some(r @ Requant { scheme: Scheme::Float { scale }, .. }), OutData::U8(_) | OutData::I8(_))
            if kernel.fuses_float =>
        {
            Some((*r, *scale))
        }
        _ => None,
    }
}

/// The scratch of [`run_with_plan`] by `plan` (its columns at most the output width),
/// from channel `ch0`, with the output stage fused or not: the pair rows of `KH` input
/// rows and the zero row (and the lanes skipped to align them), the accumulators
/// unless the stage is fused and the block aligned, and the per-column and per-lane
/// bookkeeping.
fn plan_needs(g: &ConvGeometry, plan: Plan, ch0: usize, fused: bool) -> ScratchNeeds {
    let kh_n = g.kernel_height;
    let acc = if fused && ch0.is_multiple_of(LANES) { 0 } else { plan.cols * plan.chunks * LANES };
    ScratchNeeds {
        pair_rows: (kh_n + 1) * plan.slot_lanes(g) + ALIGN_LANES - 1,
        acc,
        row_sums: plan.cols,
        tags: kh_n,
        row_at: kh_n,
        lane_bias: plan.chunks * LANES,
        lane_scale: plan.chunks * LANES,
        ..ScratchNeeds::default()
    }
}

/// The scratch [`run`] grows to for `pixels` output pixels over `channels` (see
/// [`ScratchNeeds`]), with `stage` into `out`; nothing if the shape has no
/// depthwise [`plan`] (which [`run`] refuses).
pub fn needs(
    kernel: &DwKernel,
    geometry: &ConvGeometry,
    weights: &PackedDw,
    pixels: usize,
    channels: Range<usize>,
    stage: &OutputStage<'_>,
    out: &OutData<'_>,
) -> ScratchNeeds {
    match plan(geometry, weights.out_channels) {
        Some(p) if pixels > 0 && !channels.is_empty() => {
            let p = Plan { cols: p.cols.min(geometry.out_width), ..p };
            plan_needs(geometry, p, channels.start, fused_stage(kernel, stage, out).is_some())
        }
        _ => ScratchNeeds::default(),
    }
}

/// Runs a depthwise convolution in `scratch` (see the module documentation).
///
/// # Panics
/// If [`plan`] returns `None` for this shape, or a buffer is shorter than the shapes
/// say (the public crate validates all of this first).
pub fn run(kernel: &DwKernel, args: DwArgs<'_>, scratch: &mut Scratch) {
    let plan = plan(&args.geometry, args.weights.out_channels).expect("a depthwise plan");
    run_with_plan(kernel, args, plan, scratch)
}

/// [`run`] cut by `plan` rather than by [`plan`]'s choice (tests use tiny channel
/// blocks and column tiles to reach every boundary with small problems).
///
/// # Panics
/// As [`run`], and if the plan has a zero size.
pub fn run_with_plan(kernel: &DwKernel, args: DwArgs<'_>, plan: Plan, scratch: &mut Scratch) {
    let DwArgs { input, geometry: g, zero_point, weights: w, first_pixel, pixels, stage, channels, mut out } = args;
    assert!(channels.start <= channels.end && channels.end <= w.out_channels, "channels outside the weights");
    assert!(out.rows() >= pixels && out.cols() >= channels.len(), "output window smaller than the pixels");
    if pixels == 0 || channels.is_empty() {
        return;
    }
    assert_eq!((w.kernel_height, w.kernel_width), (g.kernel_height, g.kernel_width), "weights for another kernel");
    assert!(w.out_channels.is_multiple_of(g.in_channels.max(1)), "OC a multiple of C");
    assert!(plan.chunks > 0 && plan.cols > 0, "an empty plan");
    let plan = Plan { cols: plan.cols.min(g.out_width), ..plan };
    // Quads (4 taps per lane) where the kernel and the weights allow and the kernel is
    // wide enough to gain from them.
    let quads = match &w.quads {
        Some(q) if kernel.quads && g.kernel_width >= QUAD_MIN_WIDTH => Some(q),
        _ => None,
    };
    let (packed, pairs) = match quads {
        Some(q) => (q, g.kernel_width.div_ceil(4)),
        None => (&w.data, w.pairs()),
    };
    let step = position_step(&g);
    let (kh_n, chunks_total) = (g.kernel_height, w.chunks());
    let slot_len = plan.slot_lanes(&g);
    let fused = fused_stage(kernel, &stage, &out);
    // Blocks of channels start every LANES channels; a block that starts before
    // `channels.start` (only where a partition cuts inside one) stores from there on,
    // through the accumulators.
    let ch0 = channels.start;
    let first_chunk = ch0 / LANES;
    let DwScratch { pair_rows, acc, row_sums, tags, row_at, lane_bias, lane_scale } =
        scratch.dw(&plan_needs(&g, plan, ch0, fused.is_some()));
    // The slots from the first cache line (unaligned vectors that straddle two lines
    // cost up to twice as much).
    let skip_lanes = pair_rows.as_ptr().align_offset(ALIGN_LANES * 4).min(ALIGN_LANES - 1);
    let pair_rows = &mut pair_rows[skip_lanes..][..(kh_n + 1) * slot_len];
    // Slots 0..KH hold pair rows; slot KH holds the zero point, for kernel rows in the
    // padding.
    let zp = i32::from(zero_point);
    let zero_lane = if quads.is_some() { i32::from_le_bytes([zero_point; 4]) } else { pair(zp, zp) };
    pair_rows[kh_n * slot_len..].fill(zero_lane);
    row_sums.fill(0);
    let row_len = g.in_width * g.in_channels;
    let (first_row, last_row) = (first_pixel / g.out_width, (first_pixel + pixels - 1) / g.out_width);

    let chunks_end = channels.end.div_ceil(LANES).min(chunks_total);
    for chunk0 in (first_chunk..chunks_end).step_by(plan.chunks) {
        let chunks = plan.chunks.min(chunks_end - chunk0);
        let c0 = chunk0 * LANES;
        let cols_real = (chunks * LANES).min(channels.end - c0);
        // Channels of this block before `channels.start`: computed, not stored.
        let skip = ch0.saturating_sub(c0);
        let fused = fused.filter(|_| skip == 0);
        let weights = &packed[chunk0 * kh_n * pairs * LANES..];
        if let Some((_, scale)) = fused {
            for l in 0..chunks * LANES {
                let real = l < cols_real;
                let bias = stage.bias.filter(|_| real).map_or(0, |b| b[c0 + l]);
                lane_bias[l] = bias.wrapping_add(w.neg_sums[c0 + l].wrapping_mul(zp));
                lane_scale[l] = if real { scale.at(c0 + l) } else { 0.0 };
            }
        }
        for ow0 in (0..g.out_width).step_by(plan.cols) {
            let tile_cols = plan.cols.min(g.out_width - ow0);
            let tile = Plan { cols: tile_cols, ..plan };
            let span = tile.span(&g);
            let iw0 = (ow0 * g.stride_width) as isize - g.pad_left as isize;
            // The input row (batch, ih) each slot holds, for this block and tile.
            tags.fill((usize::MAX, usize::MAX));
            for row in first_row..=last_row {
                let (b, oh) = (row / g.out_height, row % g.out_height);
                let lo = if row == first_row { first_pixel % g.out_width } else { 0 }.max(ow0);
                let hi = if row == last_row { (first_pixel + pixels - 1) % g.out_width + 1 } else { g.out_width }
                    .min(ow0 + tile_cols);
                if lo >= hi {
                    continue;
                }
                // Which slot holds each kernel row's pair row: keep the ones already
                // built, build the missing ones into slots no kernel row needs (there
                // is one: KH slots, at most KH distinct rows, the missing one not held).
                let needed = |kh: usize| g.input_row(oh, kh).map(|ih| (b, ih));
                for kh in 0..kh_n {
                    let Some(key) = needed(kh) else { continue };
                    if tags.contains(&key) {
                        continue;
                    }
                    let free =
                        (0..kh_n).find(|&s| !(0..kh_n).any(|k2| needed(k2) == Some(tags[s]))).expect("a free slot");
                    tags[free] = key;
                    let at = (b * g.in_height + key.1) * row_len;
                    kernel.build(BuildArgs {
                        input_row: &input[at..at + row_len],
                        in_channels: g.in_channels,
                        multiplier: w.out_channels / g.in_channels,
                        channel0: c0,
                        out_channels: w.out_channels,
                        chunks,
                        iw0,
                        span,
                        dilation: g.dilation_width,
                        step,
                        zero_point,
                        dst: &mut pair_rows[free * slot_len..(free + 1) * slot_len],
                        quad_offset: if quads.is_some() { 2 * g.dilation_width / step } else { 0 },
                    });
                }
                for (kh, at) in row_at.iter_mut().enumerate() {
                    *at = match needed(kh) {
                        Some(key) => tags.iter().position(|&t| t == key).expect("built above") * slot_len,
                        None => kh_n * slot_len,
                    };
                }
                // This row's first pixel, and this block's first channel, in the window.
                let (pixel, channel) = (row * g.out_width + lo - first_pixel, c0 + skip - ch0);
                let row_out = match (fused, &mut out) {
                    (Some((r, _)), OutData::U8(o)) => {
                        let o = o.window(pixel, channel, hi - lo, cols_real);
                        RowOut::Float(float_out(r, lane_bias, lane_scale, false, o))
                    }
                    (Some((r, _)), OutData::I8(o)) => {
                        let o = o.window(pixel, channel, hi - lo, cols_real).into_bytes();
                        RowOut::Float(float_out(r, lane_bias, lane_scale, true, o))
                    }
                    _ => RowOut::Acc { acc, stride: chunks * LANES },
                };
                kernel.row(RowArgs {
                    pair_rows,
                    row_at,
                    span,
                    weights,
                    pairs,
                    quads: quads.is_some(),
                    stride: g.stride_width / step,
                    pair_step: if quads.is_some() { 4 } else { 2 } * g.dilation_width / step,
                    chunks,
                    col0: lo - ow0,
                    cols: hi - lo,
                    out: row_out,
                });
                if fused.is_some() {
                    continue;
                }
                let c = c0 + skip;
                epilogue_scalar(EpilogueArgs {
                    acc: &acc[skip..],
                    acc_stride: chunks * LANES,
                    rows: hi - lo,
                    cols: cols_real - skip,
                    row_sums,
                    zero_points: ZeroPoints { a_zp: zp, col_offsets: &w.neg_sums[c..], b_zp: &w.zeros[c..] },
                    stage: stage.from_column(c),
                    out: out.window(pixel, channel, hi - lo, cols_real - skip),
                });
            }
        }
    }
}

fn float_out<'a>(
    r: Requant<'_>,
    bias: &'a [i32],
    scale: &'a [f32],
    signed: bool,
    out: OutView<'a, u8>,
) -> FloatOut<'a> {
    let (lo, hi) = ((r.min - r.zero_point) as f32, (r.max - r.zero_point) as f32);
    FloatOut { bias, scale, lo, hi, zero_point: r.zero_point, signed, out }
}

/// The lane where chunk `chunk`'s 8 lanes at position `p` start in a pair row of
/// `chunks` chunks of `span` positions: chunk-major (the module documentation), or,
/// with `wide`, the 16-lane layout of kernels that process two chunks per vector: each
/// pair of chunks `2q, 2q + 1` holds at every position 16 lanes (chunk `2q`'s, then
/// `2q + 1`'s) where chunk `2q` starts, and an odd last chunk is chunk-major. Both
/// layouts fill the same `chunks × span × LANES` lanes.
#[inline(always)]
pub fn lane_at(wide: bool, chunks: usize, span: usize, chunk: usize, p: usize) -> usize {
    if wide && chunk < chunks & !1 {
        (chunk & !1) * span * LANES + p * 2 * LANES + (chunk & 1) * LANES
    } else {
        (chunk * span + p) * LANES
    }
}

/// The runs of a pair row's lanes, for the quad pass ([`DwKernel::with_quads`]): per chunk (8
/// lanes per position) or pair of chunks in the 16-lane layout (16), its first lane
/// and its lanes per position; each run holds `span` positions.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // used by the AVX-512 kernel
pub(crate) fn lane_runs(wide: bool, chunks: usize, span: usize) -> impl Iterator<Item = (usize, usize)> {
    let paired = if wide { chunks & !1 } else { 0 };
    (0..paired)
        .step_by(2)
        .map(move |c| (lane_at(wide, chunks, span, c, 0), 2 * LANES))
        .chain((paired..chunks).map(move |c| (lane_at(wide, chunks, span, c, 0), LANES)))
}

/// One run of [`build_with`]'s fast path: `positions` consecutive positions of one
/// chunk (8 lanes) or one pair of chunks (16 lanes), with multiplier 1. Position `k`
/// pairs `x0[k·pixel0..][..lanes]` with `x1[k·pixel1..][..lanes]` into
/// `dst[k·step..][..lanes]`, lane `l` being `pair(x0[l], x1[l])`. A tap in the padding
/// reads a vector of the zero point, with pixel stride 0.
#[derive(Debug)]
pub(crate) struct FastRun<'a> {
    /// The first taps: the input row from the first position's pixel and the chunk's
    /// first channel, or the zero points.
    pub x0: &'a [u8],
    /// The second taps, likewise.
    pub x1: &'a [u8],
    /// Bytes from one position's first tap to the next's (the input channels, or 0).
    pub pixel0: usize,
    /// Bytes from one position's second tap to the next's (the input channels, or 0).
    pub pixel1: usize,
    /// The first position's lanes.
    pub dst: &'a mut [i32],
    /// Positions.
    pub positions: usize,
    /// Lanes per position: 8 or 16.
    pub lanes: usize,
    /// Lanes from one position to the next: 8, or 16 in the 16-lane layout's pairs
    /// (also for a whole chunk whose partner is the channel tail).
    pub step: usize,
}

impl FastRun<'_> {
    /// Asserts that every access the run describes is in bounds.
    #[inline(always)]
    pub(crate) fn check(&self) {
        assert!(self.positions > 0 && (self.lanes == LANES || self.lanes == 2 * LANES) && self.step >= self.lanes);
        assert!(self.x0.len() >= (self.positions - 1) * self.pixel0 + self.lanes, "fast run input");
        assert!(self.x1.len() >= (self.positions - 1) * self.pixel1 + self.lanes, "fast run input");
        assert!(self.dst.len() >= (self.positions - 1) * self.step + self.lanes, "fast run output");
    }
}

/// The pair-row build, written once for every ISA, in the chunk-major layout or, with
/// `wide`, the 16-lane one ([`lane_at`]). With multiplier 1, the chunks whose channels
/// all exist go through `fast`, a [`FastRun`] per chunk (or per pair of whole chunks
/// that lie together, with `wide`) and per run of positions whose taps are inside the
/// row or in the padding alike. Everything else takes the scalar path here. Returns
/// the destination, for a kernel that then forms quads ([`DwKernel::with_quads`]).
#[inline(always)]
pub(crate) fn build_with<'a>(args: BuildArgs<'a>, wide: bool, mut fast: impl FnMut(FastRun<'_>)) -> &'a mut [i32] {
    let BuildArgs {
        input_row,
        in_channels,
        multiplier,
        channel0,
        out_channels,
        chunks,
        iw0,
        span,
        dilation,
        step,
        zero_point,
        dst,
        quad_offset: _, // the kernel's own pass, on the returned row (`DwKernel::with_quads`)
    } = args;
    let width = (input_row.len() / in_channels.max(1)) as isize;
    let pixel = |iw: isize| (iw >= 0 && iw < width).then(|| &input_row[iw as usize * in_channels..][..in_channels]);
    // Chunks whose 8 channels all exist (the rest are the block's channel tail).
    let whole = ((out_channels - channel0) / LANES).min(chunks);
    // Chunks laid out in pairs (with `wide`).
    let paired = if wide { chunks & !1 } else { 0 };
    let zero_points = [zero_point; 2 * LANES];
    // Whether each tap of position `p` is inside the row.
    let inside = |p: usize| {
        let iw = iw0 + (p * step) as isize;
        ((0..width).contains(&iw), (0..width).contains(&(iw + dilation as isize)))
    };
    let mut p0 = 0;
    while multiplier == 1 && whole > 0 && p0 < span {
        let taps = inside(p0);
        let p1 = (p0 + 1..span).find(|&p| inside(p) != taps).unwrap_or(span);
        // A tap's bytes for chunk `chunk` from position `p0` on, and their pixel stride.
        let source = |inside: bool, iw: isize, chunk: usize| match inside {
            true => (&input_row[iw as usize * in_channels + channel0 + chunk * LANES..], in_channels * step),
            false => (&zero_points[..], 0),
        };
        let iw = iw0 + (p0 * step) as isize;
        let mut chunk = 0;
        while chunk < whole {
            let n = if chunk + 1 < whole && chunk + 1 < paired { 2 } else { 1 };
            let ((x0, pixel0), (x1, pixel1)) =
                (source(taps.0, iw, chunk), source(taps.1, iw + dilation as isize, chunk));
            fast(FastRun {
                x0,
                x1,
                pixel0,
                pixel1,
                dst: &mut dst[lane_at(wide, chunks, span, chunk, p0)..],
                positions: p1 - p0,
                lanes: n * LANES,
                step: if chunk < paired { 2 * LANES } else { LANES },
            });
            chunk += n;
        }
        p0 = p1;
    }
    let first_scalar = if multiplier == 1 { whole } else { 0 };
    for p in 0..span {
        let iw = iw0 + (p * step) as isize;
        let (x0, x1) = (pixel(iw), pixel(iw + dilation as isize));
        for chunk in first_scalar..chunks {
            let lanes = &mut dst[lane_at(wide, chunks, span, chunk, p)..][..LANES];
            let oc0 = channel0 + chunk * LANES;
            // The chunk's channels that exist, from each tap (the zero point elsewhere).
            let real = out_channels.saturating_sub(oc0).min(LANES);
            let taps = |x: Option<&[u8]>| {
                let mut v = [zero_point; LANES];
                match x {
                    Some(x) if multiplier == 1 => v[..real].copy_from_slice(&x[oc0..oc0 + real]),
                    Some(x) => v.iter_mut().take(real).enumerate().for_each(|(l, v)| *v = x[(oc0 + l) / multiplier]),
                    None => {}
                }
                v
            };
            let (v0, v1) = (taps(x0), taps(x1));
            for ((lane, &a), &b) in lanes.iter_mut().zip(&v0).zip(&v1) {
                *lane = pair(i32::from(a), i32::from(b));
            }
        }
    }
    dst
}

/// The portable build and row functions.
pub(crate) mod portable {
    use super::{BuildArgs, LANES, RowArgs, RowOut, build_with, pair};

    /// Builds a pair row in plain Rust.
    pub(crate) fn build(args: BuildArgs<'_>) {
        build_with(args, false, |run| {
            run.check();
            for k in 0..run.positions {
                let lanes = &mut run.dst[k * run.step..][..run.lanes];
                let x0 = &run.x0[k * run.pixel0..][..run.lanes];
                let x1 = &run.x1[k * run.pixel1..][..run.lanes];
                for ((lane, &a), &b) in lanes.iter_mut().zip(x0).zip(x1) {
                    *lane = pair(i32::from(a), i32::from(b));
                }
            }
        });
    }

    /// Accumulates a row tile in plain Rust (LLVM turns the pair products into
    /// `pmaddwd` where it can).
    #[multiversion::multiversion(targets("x86_64+avx2", "x86_64+sse4.1", "aarch64+neon"))]
    pub(crate) fn row(args: RowArgs<'_>) {
        let RowArgs { pair_rows, row_at, span, weights, pairs, stride, pair_step, chunks, col0, cols, out, .. } = args;
        let RowOut::Acc { acc, stride: acc_stride } = out else { unreachable!("checked by DwKernel::row") };
        let kh_n = row_at.len();
        for chunk in 0..chunks {
            let w = &weights[chunk * kh_n * pairs * LANES..][..kh_n * pairs * LANES];
            for i in 0..cols {
                let mut sum = [0i32; LANES];
                for (kh, &at) in row_at.iter().enumerate() {
                    let row = &pair_rows[at + chunk * span * LANES..][..span * LANES];
                    for j in 0..pairs {
                        let p = (col0 + i) * stride + j * pair_step;
                        let x = &row[p * LANES..][..LANES];
                        let wv = &w[(kh * pairs + j) * LANES..][..LANES];
                        for l in 0..LANES {
                            let (x0, x1) = (i32::from(x[l] as i16), x[l] >> 16);
                            let (w0, w1) = (i32::from(wv[l] as i16), wv[l] >> 16);
                            sum[l] = sum[l].wrapping_add(x0 * w0 + x1 * w1);
                        }
                    }
                }
                acc[i * acc_stride + chunk * LANES..][..LANES].copy_from_slice(&sum);
            }
        }
    }
}

static PORTABLE: DwKernel = {
    // SAFETY: plain Rust whose multiversioned clones dispatch on detected features;
    // it touches memory only through the slices it gets.
    unsafe { DwKernel::new("dw8c2-portable", portable_build, portable_row) }
};

fn portable_build(args: BuildArgs<'_>) {
    portable::build(args)
}

fn portable_row(args: RowArgs<'_>) {
    portable::row(args)
}

/// The portable depthwise kernel; available on every CPU.
pub fn portable_kernel() -> &'static DwKernel {
    &PORTABLE
}
