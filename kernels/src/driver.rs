//! The BLIS loop nest, shared by every kernel.
//!
//! ```text
//! for each block of mc rows of A                            (ic)
//!     choose the fast path or the exact kernel for this row block
//!     for each block of kc values of K                      (pc)
//!         pack A[ic.., pc..] (mc × kc) as it wants, adding row sums
//!     for each block of nc columns of packed B              (jc)
//!         for each block of kc values of K but the last     (pc)
//!             kernel.block: acc (=, then +=) A_block · B[pc.., jc..]   (mr × nr tiles)
//!         for each strip of row panels (≤ 16 KiB of packed A)
//!             kernel.block_with_stage, last K block, this strip's tiles, then
//!             the output stage: correct, bias, requantize, store (per tile, in
//!             registers, where the kernel fuses it; else over the strip)
//! ```
//!
//! A row block is packed once for all of K and reused for every block of columns, so
//! packing costs O(M·K) whatever N; its scratch is `mc × K` values. Where that would
//! exceed [`A_PACK_BYTES`] (K above about 5000 on AVX2), each K block is packed just
//! before it is used instead, once per block of columns, so the scratch stays bounded
//! whatever K: see [`Scratch`] for the whole bound.
//!
//! The rows of A come from a [`Rows`]: a matrix, or a convolution's taps gathered while
//! packing (im2col fused into the packing, never materialized).
//!
//! A GEMV (M = 1, a matrix A) takes the kernel's one-row entry where it has one
//! ([`Kernel::row_with_stage`]): A packed as one dense row for all of K, so that the
//! only stream is B's, each panel read front to back and the panels in memory order.
//!
//! The fast path (see [`Kernel`]) runs on a row block where it is exact
//! ([`Kernel::for_block`]: by the weights alone, or by the block's activations), so
//! the choice never changes a result.
//!
//! B was packed once, whole, at weight-load time, so blocking over K and N only moves
//! the starting point within its panels. The accumulators of one `mc × nc` block live
//! in scratch across the K loop; the output stage runs on each strip of rows as soon
//! as its last K block is done (inside each tile, on its registers, for kernels that
//! fuse it; else over the strip while it is in cache), and the output is written
//! exactly once.

use std::collections::TryReserveError;
use std::ops::Range;

use crate::kernel::{AFormat, BlockArgs, Kernel};
use crate::output::{EpilogueArgs, OutData, OutputStage, ZeroPoints};
use crate::pack::PackedB;
use crate::rows::Rows;

/// How much packed A one strip of the last K block may hold (see [`gemm`]), unless
/// the kernel says otherwise ([`Kernel::with_strip_bytes`]).
pub const STRIP_A_BYTES: usize = 16 << 10;

/// The most packed A a row block holds for all of K; past it, each K block is packed
/// when it is used.
pub const A_PACK_BYTES: usize = 512 << 10;

/// The most 4-bit weights one block decodes to i8 at a time (`kc × nc` values: the
/// blocks of columns are narrowed to fit).
pub const B_DECODE_BYTES: usize = 128 << 10;

/// The most scratch one [`gemm_in`] call holds, in bytes, for the kernels of this crate
/// (whose blockings keep one `mc × kc` block of packed A within [`A_PACK_BYTES`], `kc`
/// within 4096 and `mc × nc` within 64 Ki values: 48 × 512 × 1024 on AVX2,
/// 128 × 512 × 480 on AVX-512 VNNI, 256 × 640 × 256 on AMX):
/// packed A ≤ [`A_PACK_BYTES`],
/// accumulators `mc × nc` i32 ≤ 256 KiB,
/// one K block of gathered taps ≤ 4 KiB, row sums, and for 4-bit weights one
/// decoded block ≤ [`B_DECODE_BYTES`]. Tests assert it.
pub const GEMM_SCRATCH_BYTES: usize = A_PACK_BYTES + (256 << 10) + (4 << 10) + B_DECODE_BYTES;

/// The most a [`Scratch`] ever holds, whatever mix of GEMMs and convolutions it served:
/// the GEMM buffers, and the depthwise pair rows ([`crate::dwconv::DW_PAIRS_BYTES`];
/// its accumulators share the GEMM's), 24 bytes of bookkeeping per kernel row (at
/// most [`crate::dwconv::DW_MAX_KERNEL_HEIGHT`]) and 8 bytes per channel of a block
/// (at most 1024). 1 MiB.
pub const SCRATCH_BYTES: usize = 1 << 20;

/// The buffers one thread of the loop nest works in, kept by the caller across calls
/// so that repeated calls allocate nothing. They grow to what a call needs, and never
/// past [`GEMM_SCRATCH_BYTES`] together.
#[derive(Debug, Default)]
pub struct Scratch {
    a_pack: Vec<u8>,
    acc: Vec<i32>,
    row_sums: Vec<i32>,
    gather: Vec<u8>,
    offsets: Vec<usize>,
    pair_rows: Vec<i32>,
    tags: Vec<(usize, usize)>,
    row_at: Vec<usize>,
    lane_bias: Vec<i32>,
    lane_scale: Vec<f32>,
    b_decode: Vec<i8>,
}

/// The lengths, in elements, that a call grows each buffer of a [`Scratch`] to
/// ([`gemm_needs`], [`crate::indirect::gemm_needs`], [`crate::dwconv::needs`]), so that
/// a caller can reserve them all before anything is written, and report a failed
/// allocation as an error instead of aborting ([`Scratch::try_reserve`]). A
/// [`Scratch`] reserved for a call's needs does not allocate during the call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScratchNeeds {
    /// Packed A (bytes), or an indirect call's pad runs.
    pub a_pack: usize,
    /// i32 accumulators.
    pub acc: usize,
    /// i32 row sums.
    pub row_sums: usize,
    /// One K block of gathered taps (bytes).
    pub gather: usize,
    /// An indirect call's run offsets.
    pub offsets: usize,
    /// The depthwise pair rows (i32).
    pub pair_rows: usize,
    /// The depthwise row tags and row positions, one per kernel row.
    pub tags: usize,
    /// As `tags`.
    pub row_at: usize,
    /// The depthwise per-lane bias (i32) and scale (f32).
    pub lane_bias: usize,
    /// As `lane_bias`.
    pub lane_scale: usize,
    /// One block of 4-bit weights decoded to i8.
    pub b_decode: usize,
}

impl ScratchNeeds {
    /// Enough for both `self` and `other`: buffer by buffer, the larger.
    pub fn max(self, other: ScratchNeeds) -> ScratchNeeds {
        ScratchNeeds {
            a_pack: self.a_pack.max(other.a_pack),
            acc: self.acc.max(other.acc),
            row_sums: self.row_sums.max(other.row_sums),
            gather: self.gather.max(other.gather),
            offsets: self.offsets.max(other.offsets),
            pair_rows: self.pair_rows.max(other.pair_rows),
            tags: self.tags.max(other.tags),
            row_at: self.row_at.max(other.row_at),
            lane_bias: self.lane_bias.max(other.lane_bias),
            lane_scale: self.lane_scale.max(other.lane_scale),
            b_decode: self.b_decode.max(other.b_decode),
        }
    }

    /// The bytes these lengths take, all buffers together.
    pub fn bytes(&self) -> usize {
        self.a_pack
            + 4 * (self.acc + self.row_sums + self.pair_rows + self.lane_bias + self.lane_scale)
            + self.gather
            + self.b_decode
            + size_of::<usize>() * (self.offsets + self.row_at)
            + size_of::<(usize, usize)>() * self.tags
    }
}

/// The depthwise loop nest's view of a [`Scratch`].
pub(crate) struct DwScratch<'a> {
    pub pair_rows: &'a mut [i32],
    pub acc: &'a mut [i32],
    pub row_sums: &'a mut [i32],
    pub tags: &'a mut [(usize, usize)],
    pub row_at: &'a mut [usize],
    pub lane_bias: &'a mut [i32],
    pub lane_scale: &'a mut [f32],
}

impl Scratch {
    /// Empty buffers.
    pub fn new() -> Scratch {
        Scratch::default()
    }

    /// Bytes held.
    pub fn heap_size(&self) -> usize {
        self.a_pack.capacity()
            + 4 * (self.acc.capacity() + self.row_sums.capacity() + self.pair_rows.capacity())
            + self.gather.capacity()
            + size_of::<usize>() * self.offsets.capacity()
            + size_of::<(usize, usize)>() * self.tags.capacity()
            + size_of::<usize>() * self.row_at.capacity()
            + 4 * (self.lane_bias.capacity() + self.lane_scale.capacity())
            + self.b_decode.capacity()
    }

    /// Grows every buffer's capacity to `needs` (what it has already is kept), or
    /// returns the failed allocation's error, leaving what was reserved so far.
    ///
    /// # Errors
    /// An allocation that failed (or a length past `isize::MAX` bytes).
    pub fn try_reserve(&mut self, needs: &ScratchNeeds) -> Result<(), TryReserveError> {
        fn reserve<T>(v: &mut Vec<T>, len: usize) -> Result<(), TryReserveError> {
            v.try_reserve_exact(len.saturating_sub(v.len()))
        }
        reserve(&mut self.a_pack, needs.a_pack)?;
        reserve(&mut self.acc, needs.acc)?;
        reserve(&mut self.row_sums, needs.row_sums)?;
        reserve(&mut self.gather, needs.gather)?;
        reserve(&mut self.offsets, needs.offsets)?;
        reserve(&mut self.pair_rows, needs.pair_rows)?;
        reserve(&mut self.tags, needs.tags)?;
        reserve(&mut self.row_at, needs.row_at)?;
        reserve(&mut self.lane_bias, needs.lane_bias)?;
        reserve(&mut self.lane_scale, needs.lane_scale)?;
        reserve(&mut self.b_decode, needs.b_decode)
    }

    /// The buffers of an indirect convolution, grown to `needs`: offsets, pad runs (in
    /// packed A's room), accumulators and row sums.
    pub(crate) fn indirect(&mut self, needs: &ScratchNeeds) -> (&mut [usize], &mut [u8], &mut [i32], &mut [i32]) {
        (
            grown(&mut self.offsets, needs.offsets),
            grown(&mut self.a_pack, needs.a_pack),
            grown(&mut self.acc, needs.acc),
            grown(&mut self.row_sums, needs.row_sums),
        )
    }

    /// The buffers of a depthwise call, grown to `needs`.
    pub(crate) fn dw(&mut self, needs: &ScratchNeeds) -> DwScratch<'_> {
        DwScratch {
            lane_bias: grown(&mut self.lane_bias, needs.lane_bias),
            lane_scale: grown(&mut self.lane_scale, needs.lane_scale),
            pair_rows: grown(&mut self.pair_rows, needs.pair_rows),
            acc: grown(&mut self.acc, needs.acc),
            row_sums: grown(&mut self.row_sums, needs.row_sums),
            tags: grown(&mut self.tags, needs.tags),
            row_at: grown(&mut self.row_at, needs.row_at),
        }
    }
}

/// `v` with at least `len` elements (contents unspecified).
pub(crate) fn grown<T: Copy + Default>(v: &mut Vec<T>, len: usize) -> &mut [T] {
    if v.len() < len {
        v.resize(len, T::default());
    }
    &mut v[..len]
}

/// The extra elements of `T` a buffer needs so that [`line_aligned`] finds `len` of
/// them starting on a cache line.
pub(crate) const fn line_slack<T>() -> usize {
    LINE / size_of::<T>() - 1
}

/// A cache line: packed operands start on one, so that no 64-byte load of them (an
/// AMX tile row, an AVX-512 vector) splits across two lines. On a Sapphire
/// Rapids-class Xeon a tile load of rows that split lines takes about 3× as long.
pub(crate) const LINE: usize = 64;

/// `len` elements of `v` starting on a cache line ([`LINE`]), `v` grown by
/// [`line_slack`] for it (contents unspecified).
pub(crate) fn line_aligned<T: Copy + Default>(v: &mut Vec<T>, len: usize) -> &mut [T] {
    let held = grown(v, len + line_slack::<T>());
    let start = held.as_ptr().align_offset(LINE).min(line_slack::<T>());
    &mut held[start..start + len]
}

/// One GEMM call: `out[m × n] = stage(Σ (A − a_zp)(B − b_zp))`.
#[derive(Debug)]
pub struct GemmArgs<'a> {
    /// Rows of A and of the output.
    pub m: usize,
    /// A: `m` rows of K values.
    pub a: Rows<'a>,
    /// The activation zero point.
    pub a_zp: u8,
    /// The packed weights; they give K and N.
    pub b: &'a PackedB,
    /// The output stage, from column 0 of B.
    pub stage: OutputStage<'a>,
    /// The columns of B to compute, any range within `0..n` (a task of a 2-D
    /// partition); usually all of them.
    pub columns: Range<usize>,
    /// The output: a window of `m` rows by `columns.len()` columns, whose column 0 is
    /// column `columns.start` of the product.
    pub out: OutData<'a>,
}

/// The sizes [`gemm_in`] works with, from the shapes alone: what its scratch holds.
#[derive(Clone, Copy, Debug)]
struct GemmPlan {
    /// The first column of the packed panel holding `columns.start`: blocks of
    /// columns run from there, and a block that starts before `columns.start` stores
    /// only its columns from there on.
    first_panel_col: usize,
    kgroups_total: usize,
    /// Bytes per packed value of A (the widest of the kernel's and its fast path's).
    a_width: usize,
    /// Rows per block: the kernel's `mc`, or more for 4-bit weights decoded a block at
    /// a time (see [`GemmPlan::new`]).
    mc: usize,
    /// The most rows and columns of one block, rounded up to whole tiles.
    mc_max: usize,
    nc_max: usize,
    /// Columns per block: the kernel's `nc`, or fewer for 4-bit weights, whose
    /// decoded block must fit [`B_DECODE_BYTES`].
    nc: usize,
    /// Bytes of one decoded block of 4-bit weights (0 for 8-bit ones).
    b_decode_len: usize,
    /// A GEMV on the kernel's one-row entry.
    one_row: bool,
    /// A row block packed once for all of K.
    hold_all: bool,
    /// K-groups per K block.
    kc_groups: usize,
    /// Values of packed A held at once.
    a_pack_len: usize,
    /// Bytes of one K block of gathered taps (0 for a matrix).
    gather_len: usize,
}

impl GemmPlan {
    fn new(kernel: &Kernel, m: usize, matrix: bool, b: &PackedB, columns: &Range<usize>) -> GemmPlan {
        let (tile, blocking) = (kernel.tile(), kernel.blocking());
        let nibbles = b.is_nibbles();
        let first_panel_col = columns.start / tile.nr * tile.nr;
        let kgroups_total = b.k_padded() / tile.kg;
        let fast = kernel.fast_path();
        let a_width = kernel.a_format().bytes().max(fast.map_or(1, |f| f.a_format().bytes()));
        let m_tiles = m.div_ceil(tile.mr) * tile.mr;
        // One row of a matrix (a GEMV, or decoding one token): the kernel's one-row
        // entry where it (and its fast path) has one, on A packed as a dense row (not a
        // panel of `mr` rows, all but one padding, which would crowd B's stream out of
        // L1) for all of K at once.
        // 4-bit weights take the one-row entry for them, which unpacks the nibbles in
        // registers, where the kernel that runs them has one.
        let row_entry = if nibbles {
            kernel.for_block(b, || u8::MAX).has_nibble_row()
        } else {
            kernel.has_row() && fast.is_none_or(|f| f.has_row())
        };
        let one_row = m == 1 && matrix && row_entry && kgroups_total * tile.kg * a_width <= A_PACK_BYTES;
        // 4-bit weights the kernel reads as they are (unpacking them in registers), or
        // decodes a block at a time into scratch.
        let decode = nibbles && !one_row && !kernel.for_block(b, || u8::MAX).reads_nibbles(m);
        let rows_packed = if one_row { 1 } else { blocking.mc.min(m_tiles) };
        // Pack a row block once for all of K when that fits; otherwise one K block at
        // a time, as it is used.
        let hold_all = rows_packed * kgroups_total * tile.kg * a_width <= A_PACK_BYTES;
        // With a single row panel, A is tiny and B streams through once: take all of K
        // at once, so that each B panel is read front to back (what prefetchers
        // follow) rather than in kc-sized pieces a panel apart. (Not for gathered
        // rows, whose gather buffer holds one kc block, nor for 4-bit weights decoded
        // one block at a time.)
        let kc_groups = if m <= tile.mr && hold_all && matrix && !decode {
            kgroups_total.max(1)
        } else {
            // K blocks of equal size, none larger than kc: K = 576 runs as 2 × 288
            // rather than 512 + 64, whose short block costs a whole accumulator pass.
            // Each a whole number of A's K-groups (`kc` is, and so is all of K), and
            // for 4-bit weights of pairs of groups (one byte holds two).
            let most = blocking.kc / tile.kg;
            let step = tile.groups_per_a_group();
            let step = if nibbles && !step.is_multiple_of(2) { 2 * step } else { step };
            let even = kgroups_total.div_ceil(kgroups_total.div_ceil(most).max(1));
            even.next_multiple_of(step).max(step)
        };
        // A decoded block of 4-bit weights (`kc × nc` bytes) stays within
        // B_DECODE_BYTES: fewer columns per block where the kernel's `nc` would not.
        let nc = if decode {
            let panels = B_DECODE_BYTES / (kc_groups * tile.kg * tile.nr);
            blocking.nc.min(panels.max(1) * tile.nr)
        } else {
            blocking.nc
        };
        // Each block of rows decodes all of B again: with 4-bit weights decoded a block
        // at a time (AMX), blocks of rows as tall as all of K packed at once and the
        // accumulators' bound allow, so that B is decoded fewer times (at 1024³ on a
        // Sapphire Rapids-class Xeon, twice instead of 8 times).
        let mc = if decode {
            let held = A_PACK_BYTES / (kgroups_total * tile.kg * a_width).max(1);
            let most = held.min((64 << 10) / nc.max(1)).min(m_tiles);
            (most / tile.mr * tile.mr).max(blocking.mc)
        } else {
            blocking.mc
        };
        // A taller block still holds all of K within A_PACK_BYTES where the kernel's `mc`
        // did (`held`), so `hold_all` stands.
        let mc_max = mc.min(m_tiles);
        let rows_packed = if one_row { 1 } else { mc_max };
        let nc_max = nc.min(columns.end.saturating_sub(first_panel_col).div_ceil(tile.nr) * tile.nr);
        let a_pack_len = if hold_all { rows_packed * kgroups_total * tile.kg } else { mc_max * kc_groups * tile.kg };
        GemmPlan {
            mc,
            first_panel_col,
            kgroups_total,
            a_width,
            mc_max,
            nc_max,
            nc,
            b_decode_len: if decode { nc_max * kc_groups * tile.kg } else { 0 },
            one_row,
            hold_all,
            kc_groups,
            a_pack_len,
            gather_len: if matrix { 0 } else { kc_groups * tile.kg },
        }
    }

    fn needs(&self) -> ScratchNeeds {
        ScratchNeeds {
            // Packed A, the accumulators and decoded 4-bit weights start on a cache line
            // (`line_aligned`).
            a_pack: self.a_pack_len * self.a_width + line_slack::<u8>(),
            acc: self.mc_max * self.nc_max + line_slack::<i32>(),
            row_sums: self.mc_max,
            gather: self.gather_len,
            b_decode: self.b_decode_len + line_slack::<i8>(),
            ..ScratchNeeds::default()
        }
    }
}

/// The scratch [`gemm_in`] grows to for a GEMM of `m` rows over `columns` of `b`, with
/// A a matrix (`matrix`) or gathered rows: what to reserve first, fallibly, so that a
/// failed allocation is an error before anything is written
/// ([`Scratch::try_reserve`]).
pub fn gemm_needs(kernel: &Kernel, m: usize, matrix: bool, b: &PackedB, columns: Range<usize>) -> ScratchNeeds {
    if m == 0 || columns.is_empty() {
        return ScratchNeeds::default();
    }
    GemmPlan::new(kernel, m, matrix, b, &columns).needs()
}

/// Runs a GEMM with `kernel` on the calling thread, with scratch of its own.
///
/// # Panics
/// As [`gemm_in`].
pub fn gemm(kernel: &Kernel, args: GemmArgs<'_>) {
    gemm_in(kernel, args, &mut Scratch::new())
}

/// Runs a GEMM with `kernel` on the calling thread, in `scratch`.
///
/// # Panics
/// If the weights were packed for another tile, or a buffer is shorter than the
/// shapes say (the public crate validates all of this first).
pub fn gemm_in(kernel: &Kernel, args: GemmArgs<'_>, scratch: &mut Scratch) {
    let GemmArgs { m, a, a_zp, b, stage, columns, mut out } = args;
    let tile = kernel.tile();
    assert!(b.fits(tile), "weights packed for another tile");
    let k = b.k();
    assert!(columns.start <= columns.end && columns.end <= b.n(), "columns outside the weights");
    assert!(out.rows() >= m && out.cols() >= columns.len(), "output window smaller than the product");
    if m == 0 || columns.is_empty() {
        return;
    }
    // The packed panels start every `nr` columns: blocks of columns run from the panel
    // holding `columns.start`, and a block that starts before it stores only its
    // columns from `columns.start` on (see `skip` below).
    if let Rows::Matrix { data, stride } | Rows::Flipped { data, stride } = a {
        assert!(k == 0 || (stride >= k && data.len() >= (m - 1) * stride + k), "A too short");
    }
    let matrix = matches!(a, Rows::Matrix { .. });
    let plan = GemmPlan::new(kernel, m, matrix, b, &columns);
    let needs = plan.needs();
    let GemmPlan { mc, first_panel_col, kgroups_total, nc_max, nc, one_row, hold_all, kc_groups, .. } = plan;
    let (j0, n) = (columns.start, columns.end);
    let Scratch { a_pack, acc, row_sums, gather, b_decode, .. } = scratch;
    let b_decode = line_aligned(b_decode, needs.b_decode - line_slack::<i8>());
    let a_pack = line_aligned(a_pack, needs.a_pack - line_slack::<u8>());
    let acc = line_aligned(acc, needs.acc - line_slack::<i32>());
    let row_sums = grown(row_sums, needs.row_sums);
    let gather = grown(gather, needs.gather);
    let zero_points = ZeroPoints { a_zp: i32::from(a_zp), col_offsets: b.col_offsets(), b_zp: b.zero_points() };
    // The row sums only meet nonzero weight zero points (`− b_zp · Σ_k a`); with
    // symmetric weights, the common case, packing skips them and they stay 0.
    // (An OR over all of them, which vectorizes, where `any` stops early but goes one
    // value at a time: N values on every call, a GEMV's only per-column pass.)
    let sum_rows = b.zero_points().iter().fold(0, |or, &z| or | z) != 0;

    for ic in (0..m).step_by(mc) {
        let rows = mc.min(m - ic);
        let row_panels = rows.div_ceil(tile.mr);
        let a_block = a.skip(ic);
        row_sums.fill(0);
        // One choice per row block: the fast path where it is exact for these weights
        // (and, for some kernels, this block's activations), the exact kernel otherwise.
        let block_kernel = kernel.for_block(b, || a_block.max_value(rows, k));
        let format = block_kernel.a_format();
        // Flipped activations (`a − 128`) have the zero point `a_zp − 128`.
        let zero_points = ZeroPoints { a_zp: i32::from(a_zp) - format.offset(), ..zero_points };
        let row = one_row && if b.is_nibbles() { block_kernel.has_nibble_row() } else { block_kernel.has_row() };
        // 4-bit weights the kernel unpacks in registers (else decoded a block at a time).
        let direct = b.is_nibbles() && block_kernel.reads_nibbles(m);
        // Where packing the row would only copy it (u8, whole k-groups, no row sums),
        // the kernel reads it in place.
        let in_place = row && format == AFormat::U8 && k == kgroups_total * tile.kg && !sum_rows;
        // K block i covers k-groups [i·kc_groups, …) and, holding all of K, starts at
        // i · block_bytes of packed A (each block but the last is kc_groups long).
        let k_blocks = kgroups_total.div_ceil(kc_groups);
        let block_bytes = row_panels * tile.mr * kc_groups * tile.kg * format.bytes();
        let offset = |i: usize| if hold_all { i * block_bytes } else { 0 };
        let groups_of = |i: usize| kc_groups.min(kgroups_total - i * kc_groups);
        if hold_all && !in_place {
            for i in 0..k_blocks {
                let sums = if sum_rows { Some(&mut row_sums[..]) } else { None };
                let dst = &mut a_pack[offset(i)..];
                block_kernel.pack_a(&a_block, rows, k, i * kc_groups, groups_of(i), row, dst, sums, gather);
            }
        }
        for jc in (first_panel_col..n).step_by(nc) {
            let cols = nc.min(n - jc);
            // Columns of this block before `columns.start`: computed (they share its
            // first panel) but never stored.
            let skip = j0.saturating_sub(jc);
            let col_panels = cols.div_ceil(tile.nr);
            // K block i of B for this block of columns, and its panel stride: the
            // packed weights themselves, or for 4-bit ones the block decoded to i8.
            // Without room for all of K, each K block is packed here, as it is used (the
            // row sums on the first block of columns only).
            let mut pack_now = |i: usize, a_pack: &mut [u8], row_sums: &mut [i32]| {
                if !hold_all {
                    let sums = if jc == first_panel_col && sum_rows { Some(row_sums) } else { None };
                    block_kernel.pack_a(&a_block, rows, k, i * kc_groups, groups_of(i), false, a_pack, sums, gather);
                }
            };
            if k_blocks == 0 {
                // K = 0: no block writes the accumulators.
                acc.fill(0);
                let at = Position { r0: 0, rows, ic, jc, j0, skip, cols };
                kernel.epilogue(epilogue_args(acc, nc_max, row_sums, at, zero_points, stage, &mut out));
                continue;
            }
            if row {
                // All of K in one block (`kc_groups`), its output stage fused where the
                // kernel can; from the first column to store where the block starts
                // before `columns.start`, as below.
                let a_row = match a_block {
                    Rows::Matrix { data, .. } if in_place => &data[..k],
                    _ => &a_pack[..],
                };
                // 4-bit weights as they are: the one-row entry for them unpacks the
                // nibbles in registers.
                let (b_row, b_panel_stride) =
                    b_block_of(&block_kernel, b, b_decode, true, (jc, col_panels), 0, groups_of(0));
                let block_args = BlockArgs {
                    a: a_row,
                    b: b_row,
                    b_panel_stride,
                    row_panels: 1,
                    rows: 1,
                    col_panels,
                    cols,
                    kgroups: kgroups_total,
                    acc,
                    acc_stride: nc_max,
                    accumulate: false,
                };
                let at = Position { r0: 0, rows: 1, ic, jc, j0, skip, cols };
                match (skip > 0, b.is_nibbles()) {
                    (true, nibbles) => {
                        if nibbles {
                            block_kernel.nibble_row_block(block_args);
                        } else {
                            block_kernel.row_block(block_args);
                        }
                        kernel.epilogue(epilogue_args(acc, nc_max, row_sums, at, zero_points, stage, &mut out));
                    }
                    (false, nibbles) => {
                        let stage_args = epilogue_args(&[], nc_max, row_sums, at, zero_points, stage, &mut out);
                        if nibbles {
                            block_kernel.nibble_row_with_stage(block_args, stage_args);
                        } else {
                            block_kernel.row_with_stage(block_args, stage_args);
                        }
                    }
                }
                continue;
            }
            // K blocks through the accumulators, over the whole block (each B panel
            // slice stays in L1 while the row panels stream by): every one but the last;
            // or all of them where the block starts before `columns.start` (only where a
            // partition cuts inside a panel), whose output stage then runs from the
            // first column to store: slower than the fused route below, the same sums.
            let through_acc = if skip > 0 { k_blocks } else { k_blocks - 1 };
            for i in 0..through_acc {
                pack_now(i, a_pack, row_sums);
                let (b_i, b_panel_stride) =
                    b_block_of(&block_kernel, b, b_decode, direct, (jc, col_panels), i * kc_groups, groups_of(i));
                let run = if direct { Kernel::nibble_block } else { Kernel::block };
                run(
                    &block_kernel,
                    BlockArgs {
                        a: &a_pack[offset(i)..],
                        b: b_i,
                        b_panel_stride,
                        row_panels,
                        rows,
                        col_panels,
                        cols,
                        kgroups: groups_of(i),
                        acc,
                        acc_stride: nc_max,
                        accumulate: i > 0,
                    },
                );
            }
            if skip > 0 {
                let at = Position { r0: 0, rows, ic, jc, j0, skip, cols };
                kernel.epilogue(epilogue_args(acc, nc_max, row_sums, at, zero_points, stage, &mut out));
                continue;
            }
            let last = k_blocks - 1;
            let (groups_last, last_offset) = (groups_of(last), offset(last));
            pack_now(last, a_pack, row_sums);
            let (b_last, b_panel_stride) =
                b_block_of(&block_kernel, b, b_decode, direct, (jc, col_panels), last * kc_groups, groups_last);
            // The last K block a strip of row panels at a time, with the output stage
            // of its rows: fused into each tile where the kernel can, else straight
            // after the strip while its accumulators are still in cache; never a pass
            // over a large block. A strip's packed A fits in the kernel's strip size (16
            // KiB by default, so each B panel slice is read once per strip from L1; AMX
            // takes its whole row block, whose B panel slices stay in L1 instead).
            let a_panel_bytes = groups_last * tile.mr * tile.kg * format.bytes();
            let strip_panels = (kernel.strip_bytes() / a_panel_bytes.max(1)).clamp(1, row_panels);
            for ip in (0..row_panels).step_by(strip_panels) {
                let panels = strip_panels.min(row_panels - ip);
                let r0 = ip * tile.mr;
                let strip_rows = (panels * tile.mr).min(rows - r0);
                let block_args = BlockArgs {
                    a: &a_pack[last_offset + ip * a_panel_bytes..],
                    b: b_last,
                    b_panel_stride,
                    row_panels: panels,
                    rows: strip_rows,
                    col_panels,
                    cols,
                    kgroups: groups_last,
                    acc: &mut acc[r0 * nc_max..],
                    acc_stride: nc_max,
                    accumulate: last > 0,
                };
                // The accumulators come from the block (`block_with_stage` reads them
                // itself where the kernel does not fuse the stage into its tiles).
                let at = Position { r0, rows: strip_rows, ic, jc, j0, skip: 0, cols };
                let stage_args = epilogue_args(&[], nc_max, row_sums, at, zero_points, stage, &mut out);
                if direct {
                    block_kernel.nibble_block_with_stage(block_args, stage_args);
                } else {
                    block_kernel.block_with_stage(block_args, stage_args);
                }
            }
        }
    }
}

/// K-groups `[g0, g0 + groups)` of the `col_panels` panels of B from column `jc`, and
/// their panel stride: the packed weights themselves (4-bit ones where `direct`: the
/// kernel unpacks them), or for other 4-bit weights the block decoded to i8 into
/// `decoded`.
fn b_block_of<'s>(
    kernel: &Kernel,
    b: &'s PackedB,
    decoded: &'s mut [i8],
    direct: bool,
    (jc, col_panels): (usize, usize),
    g0: usize,
    groups: usize,
) -> (&'s [i8], usize) {
    let tile = b.tile();
    if b.is_nibbles() && direct {
        return (&b.data()[(jc / tile.nr) * b.panel_stride() + g0 / 2 * tile.nr * tile.kg..], b.panel_stride());
    }
    if b.is_nibbles() {
        kernel.decode_nibbles(b, jc / tile.nr, col_panels, g0, groups, decoded);
        return (decoded, groups * tile.nr * tile.kg);
    }
    (&b.data()[(jc / tile.nr) * b.panel_stride() + g0 * tile.nr * tile.kg..], b.panel_stride())
}

/// Where an output stage call lands: rows `r0..r0 + rows` of the row block at `ic`,
/// columns `skip..cols` of the column block at `jc`, in an output whose column 0 is
/// column `j0` of the product.
#[derive(Clone, Copy)]
pub(crate) struct Position {
    pub r0: usize,
    pub rows: usize,
    pub ic: usize,
    pub jc: usize,
    pub j0: usize,
    pub skip: usize,
    pub cols: usize,
}

/// The output stage of one [`Position`] of the accumulator block (`acc` is the whole
/// block, or empty where the kernel computes the sums itself).
pub(crate) fn epilogue_args<'a>(
    acc: &'a [i32],
    acc_stride: usize,
    row_sums: &'a [i32],
    at: Position,
    zero_points: ZeroPoints<'a>,
    stage: OutputStage<'a>,
    out: &'a mut OutData<'_>,
) -> EpilogueArgs<'a> {
    let Position { r0, rows, ic, jc, j0, skip, cols } = at;
    let c = jc + skip;
    EpilogueArgs {
        acc: acc.get(r0 * acc_stride + skip..).unwrap_or(&[]),
        acc_stride,
        rows,
        cols: cols - skip,
        row_sums: &row_sums[r0..],
        zero_points: ZeroPoints {
            col_offsets: &zero_points.col_offsets[c..],
            b_zp: &zero_points.b_zp[c..],
            ..zero_points
        },
        stage: stage.from_column(c),
        out: out.window(ic + r0, c - j0, rows, cols - skip),
    }
}
