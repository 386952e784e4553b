//! What the blocked loop nest needs from one ISA's implementation.

use crate::output::EpilogueArgs;
use crate::pack::{DecodePairsFn, PackA, PackAFn, PackedB, RowSumFn};
use crate::rows::Rows;

/// The register tile of a microkernel: it computes `mr × nr` accumulators, consuming
/// K in groups of `kg` (the "c" in names like `4x32c2`).
///
/// A and B are packed in K-groups of their own: B in groups of `kg` per column, A in
/// groups of `ka` per row. Most kernels take both in the same groups; AMX reads a row
/// of A as 64 consecutive k values but B in groups of 4 per column, so its A groups
/// are 16 of B's ([`Tile::with_a_group`]). K is padded to whole A groups
/// ([`Tile::k_step`]), and block sizes in K are counted in B's groups throughout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tile {
    /// Rows of A (and C) per microkernel call.
    pub mr: usize,
    /// Columns of B (and C) per microkernel call.
    pub nr: usize,
    /// Consecutive k values packed together for one column of B.
    pub kg: usize,
    /// Consecutive k values packed together for one row of A: `kg`, or a multiple of it.
    pub ka: usize,
}

impl Tile {
    /// A tile whose A and B share their K-group.
    pub const fn new(mr: usize, nr: usize, kg: usize) -> Tile {
        Tile { mr, nr, kg, ka: kg }
    }

    /// The same tile with A packed in K-groups of `ka` values.
    ///
    /// # Panics
    /// Unless `ka` is a multiple of `kg`.
    pub const fn with_a_group(self, ka: usize) -> Tile {
        assert!(ka > 0 && ka.is_multiple_of(self.kg), "A's K-group must be a multiple of B's");
        Tile { ka, ..self }
    }

    /// What K is padded to a multiple of, in both packed operands: the larger group.
    pub const fn k_step(&self) -> usize {
        self.ka
    }

    /// B's K-groups per A K-group (1 for most kernels).
    pub const fn groups_per_a_group(&self) -> usize {
        self.ka / self.kg
    }
}

/// Cache blocking of the loop nest (BLIS names): a block of `mc` rows of A times `kc`
/// values of K is packed at a time, and `nc` columns of packed B are swept per block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Blocking {
    /// Rows per A block; a multiple of the tile's `mr`.
    pub mc: usize,
    /// K values per block; a multiple of the tile's `kg`.
    pub kc: usize,
    /// Columns per block; a multiple of the tile's `nr`.
    pub nc: usize,
}

/// One call of a kernel's block function: `acc += A_block · B_block` (or, without
/// `accumulate`, `acc = A_block · B_block`) over every
/// `mr × nr` tile of the block.
///
/// Packed A holds `row_panels` panels of `kgroups × mr × kg` values each, in the
/// kernel's [`AFormat`], of which the first `rows`
/// rows are real and the rest zero padding; packed B holds
/// `col_panels` panels, the first at `b[0]` and each next one `b_panel_stride` bytes on,
/// of which the first `kgroups × nr × kg` are read (see [`crate::pack`] for the
/// layouts). `acc` is row-major with `acc_stride` columns and at least
/// `row_panels · mr` rows and `col_panels · nr` columns.
#[derive(Debug)]
pub struct BlockArgs<'a> {
    /// Packed A block.
    pub a: &'a [u8],
    /// Packed B, at the block's first panel and first k-group.
    pub b: &'a [i8],
    /// Distance in bytes between consecutive panels of packed B.
    pub b_panel_stride: usize,
    /// Panels of `mr` rows in the block.
    pub row_panels: usize,
    /// Rows of the block that are real (`≤ row_panels · mr`); a kernel may skip the
    /// padding rows of the last panel, whose accumulators are never read.
    pub rows: usize,
    /// Panels of `nr` columns in the block.
    pub col_panels: usize,
    /// Columns of the block that are real (`≤ col_panels · nr`); a kernel may skip the
    /// padding columns of the last panel, whose accumulators are never read.
    pub cols: usize,
    /// Groups of `kg` values of K in the block.
    pub kgroups: usize,
    /// The accumulator block, updated in place.
    pub acc: &'a mut [i32],
    /// Add to `acc` (every K block but the first) or overwrite it (the first, which
    /// saves clearing it); the real rows of every tile are written either way.
    pub accumulate: bool,
    /// Distance between rows of `acc`.
    pub acc_stride: usize,
}

/// Rows of A read in place, through offsets: an indirect convolution's view of its
/// input (see [`crate::indirect`]). Row `r`'s K is `segments` runs of `seg_groups · 4`
/// bytes, run `s` at `offsets[r · segments + s]`; an offset below `input.len()` is
/// into `input`, any other `o` is `pad[o − input.len()]` (rows filled with the zero
/// point, and copies of runs that cross the padding or the input's end). Every run
/// lies within the buffer it starts in ([`Kernel::indirect_block`] checks it).
#[derive(Clone, Copy, Debug)]
pub struct IndirectA<'a> {
    /// The input the offsets below its length point into.
    pub input: &'a [u8],
    /// The runs that are not in the input.
    pub pad: &'a [u8],
    /// `rows × segments` offsets, row-major.
    pub offsets: &'a [usize],
    /// Runs per row.
    pub segments: usize,
    /// K-groups of 4 bytes per run.
    pub seg_groups: usize,
}

impl IndirectA<'_> {
    /// Panics unless every run of rows `0..rows` lies within its buffer.
    pub(crate) fn check(&self, rows: usize) {
        let run = self.seg_groups * 4;
        let (input, pad) = (self.input.len(), self.pad.len());
        assert!(self.offsets.len() >= rows * self.segments, "indirection offsets");
        // The largest offset into each buffer (branch-free, so the check stays cheap
        // beside the kernel), then one bound each.
        let (mut last_in, mut last_pad, mut any_in, mut any_pad) = (0, 0, false, false);
        for &o in &self.offsets[..rows * self.segments] {
            let is_in = o < input;
            last_in = if is_in { last_in.max(o) } else { last_in };
            last_pad = if is_in { last_pad } else { last_pad.max(o) };
            any_in |= is_in;
            any_pad |= !is_in;
        }
        assert!(!any_in || input - last_in >= run, "an indirect run outside the input");
        assert!(
            !any_pad || (last_pad - input <= pad && pad - (last_pad - input) >= run),
            "an indirect run outside the pad"
        );
    }
}

/// One call of a kernel's indirect block function: `acc = A · B_block` over every
/// `mr × nr` tile of `rows` rows (read through [`IndirectA`]) and `col_panels` panels
/// of B, for all of K (`segments · seg_groups` k-groups) at once. The layout of B and
/// `acc` is [`BlockArgs`]'s.
#[derive(Debug)]
pub struct IndirectArgs<'a> {
    /// A, read in place.
    pub a: IndirectA<'a>,
    /// Packed B, at the block's first panel.
    pub b: &'a [i8],
    /// Distance in bytes between consecutive panels of packed B.
    pub b_panel_stride: usize,
    /// Rows of the block.
    pub rows: usize,
    /// Panels of `nr` columns in the block.
    pub col_panels: usize,
    /// Columns of the block that are real (`≤ col_panels · nr`).
    pub cols: usize,
    /// The accumulator block, overwritten (its real rows).
    pub acc: &'a mut [i32],
    /// Distance between rows of `acc`.
    pub acc_stride: usize,
}

/// Computes an indirect block into the accumulators; see [`IndirectArgs`].
///
/// # Safety
/// As for [`BlockFn`].
pub type IndirectFn = unsafe fn(IndirectArgs<'_>);

/// Computes an indirect block and applies the output stage to each tile in registers;
/// see [`Kernel::indirect_with_stage`].
///
/// # Safety
/// As for [`BlockFn`].
pub type StagedIndirectFn = unsafe fn(IndirectArgs<'_>, EpilogueArgs<'_>);

/// A kernel's indirect entry points (see [`Kernel::with_indirect`]).
#[derive(Clone, Copy, Debug)]
struct IndirectFns {
    block: IndirectFn,
    staged: Option<StagedIndirectFn>,
}

/// A kernel's one-row (GEMV) entry points (see [`Kernel::with_row`]).
#[derive(Clone, Copy, Debug)]
struct RowFns {
    block: BlockFn,
    staged: Option<StagedBlockFn>,
}

/// Accumulates a block; see [`BlockArgs`].
///
/// # Safety
/// The CPU must support the instructions the function was compiled for; a [`Kernel`]
/// is only constructed where it does (see [`Kernel::new`]).
pub type BlockFn = unsafe fn(BlockArgs<'_>);

/// Applies the zero-point correction and output stage to a block of accumulators and
/// stores the result; see [`EpilogueArgs`].
///
/// # Safety
/// As for [`BlockFn`].
pub type EpilogueFn = unsafe fn(EpilogueArgs<'_>);

/// Accumulates the last K block of a block and applies the output stage to each tile
/// while its sums are in registers, storing the output instead of the accumulators;
/// see [`Kernel::block_with_stage`].
///
/// # Safety
/// As for [`BlockFn`].
pub type StagedBlockFn = unsafe fn(BlockArgs<'_>, EpilogueArgs<'_>);

/// Whether a kernel's staged entry points fuse this stage into their tiles (see
/// [`Kernel::with_fusion_when`]); where not, [`Kernel`] runs the block into the
/// accumulators and then the epilogue, without calling them.
pub type FusesFn = fn(&EpilogueArgs<'_>) -> bool;

/// One ISA's GEMM implementation: its tile, its blocking and its two entry points.
///
/// A `Kernel` can only exist where its instructions can run: the constructor is
/// `unsafe` and each ISA module hands out its kernel through a fallible function
/// that detects the CPU features first. Calling through a `Kernel` is therefore safe.
///
/// A kernel may carry a *fast path*: a second kernel with the same tile and blocking
/// that sums two products in an i16 lane, and is exact only where [`FastWhen`] says
/// that sum cannot leave i16. The driver runs it on a row block where that holds and
/// runs the kernel itself otherwise, so the choice never changes a result.
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    name: &'static str,
    tile: Tile,
    blocking: Blocking,
    block: BlockFn,
    epilogue: EpilogueFn,
    a_format: AFormat,
    pack_a: PackAFn,
    row_sum: RowSumFn,
    decode_pairs: DecodePairsFn,
    strip_bytes: usize,
    nibble_block_rows: usize,
    staged: Option<StagedBlockFn>,
    indirect: Option<IndirectFns>,
    row: Option<RowFns>,
    nibble_row: Option<RowFns>,
    nibble_block: Option<RowFns>,
    fuses: Option<FusesFn>,
    fast: Option<FastPath>,
}

/// How a kernel wants its A block packed (see [`crate::pack::pack_a`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AFormat {
    /// The activations as they are, one byte each.
    U8,
    /// Each activation widened to a little-endian i16 (two bytes), once at packing
    /// time rather than on every use in the inner loop (`vpmaddwd`).
    I16,
    /// Each activation with its top bit flipped, `a ^ 0x80 = a − 128` as an i8: for
    /// signed × signed instructions (`smull`, `sdot`). The kernel then computes
    /// `Σ (a − 128)·b`, which is the product of activations whose zero point is
    /// `a_zp − 128`: the driver hands the epilogue that zero point and row sums of the
    /// flipped values, and the zero-point correction does the rest.
    FlippedI8,
}

impl AFormat {
    /// Bytes per packed value.
    pub const fn bytes(self) -> usize {
        match self {
            AFormat::U8 | AFormat::FlippedI8 => 1,
            AFormat::I16 => 2,
        }
    }

    /// What packing subtracts from each activation (the flip's 128, or 0).
    pub const fn offset(self) -> i32 {
        match self {
            AFormat::FlippedI8 => 128,
            AFormat::U8 | AFormat::I16 => 0,
        }
    }
}

/// Where a kernel's fast path is exact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FastWhen {
    /// When every u8 × i8 pair sum `a0·b0 + a1·b1` of aligned k pairs fits in i16
    /// (`vpmaddubsw`): for any activation when the weights' pairs have
    /// `|w0| + |w1| ≤ 128` ([`crate::pack::PackedB::pair_sums_fit_i16`]), and for
    /// any weights when the block's activations are all ≤ 127.
    PairSumsFitI16,
    /// When no weight is −128 ([`crate::pack::PackedB::excludes_i8_min`]): then a
    /// flipped activation times a weight is at most 128·127 in magnitude and any two
    /// such products sum within i16 (`smull` + `smlal2`). Activations do not matter.
    NoMinWeight,
}

/// What a fast path changes: its name, its block function and its A format. The tile,
/// blocking and epilogue are the exact kernel's.
#[derive(Clone, Copy, Debug)]
struct FastPath {
    name: &'static str,
    block: BlockFn,
    staged: Option<StagedBlockFn>,
    indirect: Option<IndirectFns>,
    row: Option<RowFns>,
    nibble_row: Option<RowFns>,
    nibble_block: Option<RowFns>,
    fuses: Option<FusesFn>,
    a_format: AFormat,
    pack_a: PackAFn,
    row_sum: RowSumFn,
    when: FastWhen,
}

impl Kernel {
    /// Describes a kernel.
    ///
    /// # Safety
    /// `block` and `epilogue` must be sound to call on this CPU with arguments that
    /// satisfy [`BlockArgs`] and [`EpilogueArgs`], and must only access memory
    /// through the slices they are given.
    ///
    /// # Panics
    /// If the blocking is not a whole number of tiles, or any size is zero.
    pub const unsafe fn new(
        name: &'static str,
        tile: Tile,
        blocking: Blocking,
        block: BlockFn,
        epilogue: EpilogueFn,
    ) -> Kernel {
        assert!(tile.mr > 0 && tile.nr > 0 && tile.kg > 0 && tile.ka.is_multiple_of(tile.kg));
        assert!(blocking.mc > 0 && blocking.mc.is_multiple_of(tile.mr));
        assert!(blocking.kc > 0 && blocking.kc.is_multiple_of(tile.k_step()));
        assert!(blocking.nc > 0 && blocking.nc.is_multiple_of(tile.nr));
        Kernel {
            name,
            tile,
            blocking,
            block,
            epilogue,
            a_format: AFormat::U8,
            pack_a: crate::pack::packer(tile.ka, AFormat::U8),
            row_sum: crate::pack::byte_sum,
            decode_pairs: crate::pack::decode_pairs,
            strip_bytes: crate::driver::STRIP_A_BYTES,
            nibble_block_rows: usize::MAX,
            staged: None,
            indirect: None,
            row: None,
            nibble_row: None,
            nibble_block: None,
            fuses: None,
            fast: None,
        }
    }

    /// The same kernel, reading packed A in `format` (u8 unless said otherwise), packed
    /// by the portable packer of that format ([`crate::pack::packer`]).
    ///
    /// # Panics
    /// Where there is no packer for the tile's `ka` in `format`.
    pub const fn with_a_format(mut self, format: AFormat) -> Kernel {
        self.a_format = format;
        self.pack_a = crate::pack::packer(self.tile.ka, format);
        self
    }

    /// The same kernel, packing A with `pack` and summing rows with `row_sum` (faster
    /// versions of the portable ones, compiled for the kernel's own ISA), rather than
    /// with the portable packer of its format. Set the format first.
    ///
    /// # Safety
    /// Both must be sound to call on every CPU the kernel's tier runs on, and compute
    /// what the portable packer of the kernel's format and
    /// `crate::pack::byte_sum` compute.
    pub const unsafe fn with_a_packing(mut self, pack: PackAFn, row_sum: RowSumFn) -> Kernel {
        self.pack_a = pack;
        self.row_sum = row_sum;
        self
    }

    /// The same kernel, decoding 4-bit weights a block at a time (where it has no entry
    /// that reads them as they are) with `decode` (a faster version of the portable
    /// [`crate::pack::decode_pairs`], compiled for the kernel's own ISA).
    ///
    /// # Safety
    /// `decode` must be sound to call on every CPU the kernel's tier runs on, and
    /// compute what `crate::pack::decode_pairs` computes.
    pub const unsafe fn with_nibble_decoder(mut self, decode: DecodePairsFn) -> Kernel {
        self.decode_pairs = decode;
        self
    }

    /// Writes k-groups `[g0, g0 + groups)` of `col_panels` panels of 4-bit weights `b`
    /// from panel `first_panel` into `dst` as i8 ([`PackedB::decode_nibbles`]), with
    /// this kernel's decoder.
    ///
    /// # Panics
    /// As [`PackedB::decode_nibbles`].
    pub fn decode_nibbles(
        &self,
        b: &PackedB,
        first_panel: usize,
        col_panels: usize,
        g0: usize,
        groups: usize,
        dst: &mut [i8],
    ) {
        b.decode_nibbles(first_panel, col_panels, g0, groups, dst, |src, out, group| {
            // SAFETY: the kernel exists, so the CPU supports its decoder's instructions
            // (see `Kernel::with_nibble_decoder`); it accesses memory only through the
            // slices.
            unsafe { (self.decode_pairs)(src, out, group) }
        })
    }

    /// Packs k-groups `[g0, g0 + groups)` of rows `0..rows` of A for this kernel (the
    /// groups are B's, `kg` values; the block starts and ends on A's groups), into
    /// panels of `mr` rows, or as one dense row where `one_row` (see
    /// [`Kernel::with_row`]); see [`crate::pack::pack_a`].
    ///
    /// # Panics
    /// If the block does not start and end on A's K-groups, or as `pack_a` does.
    #[allow(clippy::too_many_arguments)]
    pub fn pack_a(
        &self,
        a: &Rows<'_>,
        rows: usize,
        k: usize,
        g0: usize,
        groups: usize,
        one_row: bool,
        dst: &mut [u8],
        row_sums: Option<&mut [i32]>,
        gather: &mut [u8],
    ) {
        let per = self.tile.groups_per_a_group();
        assert!(g0.is_multiple_of(per) && groups.is_multiple_of(per), "a block across A's K-groups");
        let mr = if one_row { 1 } else { self.tile.mr };
        let args = PackA { mr, a, rows, k, g0: g0 / per, groups: groups / per, dst, row_sums, gather };
        // SAFETY: the kernel exists, so the CPU supports its packer's instructions (see
        // `Kernel::with_a_packing`); the packer accesses memory only through the slices.
        unsafe { (self.pack_a)(args) }
    }

    /// `Σ src`, wrapping in u32, with the kernel's row-sum function.
    pub fn row_sum(&self, src: &[u8]) -> u32 {
        // SAFETY: as in `pack_a`.
        unsafe { (self.row_sum)(src) }
    }

    /// The same kernel, with the output stage fused into its tiles on the last K block.
    ///
    /// # Safety
    /// `staged` must compute what [`Kernel::block`] followed by [`Kernel::epilogue`]
    /// computes (see [`Kernel::block_with_stage`]), and satisfy the contract of
    /// [`Kernel::new`].
    pub const unsafe fn with_staged_block(mut self, staged: StagedBlockFn) -> Kernel {
        self.staged = Some(staged);
        self
    }

    /// The same kernel, whose staged entry points (packed, one-row and indirect) fuse
    /// only the stages `fuses` accepts: for any other, the kernel runs the block into
    /// the accumulators and then its epilogue, and the staged entry is not called.
    /// Without it, the staged entry points take every stage.
    pub const fn with_fusion_when(mut self, fuses: FusesFn) -> Kernel {
        self.fuses = Some(fuses);
        self
    }

    /// Whether the staged entry points take `stage` (see [`Kernel::with_fusion_when`]).
    fn fuses(&self, stage: &EpilogueArgs<'_>) -> bool {
        self.fuses.is_none_or(|fuses| fuses(stage))
    }

    /// The same kernel, able to read A in place through offsets (an indirect
    /// convolution): `block` computes what [`Kernel::block`] computes on the same rows
    /// packed, and `staged`, where given, what [`Kernel::block_with_stage`] computes.
    ///
    /// # Safety
    /// As [`Kernel::with_staged_block`], for [`IndirectArgs`]; the kernel's A format is
    /// u8, which the rows are read as.
    pub const unsafe fn with_indirect(mut self, block: IndirectFn, staged: Option<StagedIndirectFn>) -> Kernel {
        self.indirect = Some(IndirectFns { block, staged });
        self
    }

    /// The same kernel, with entry points for a block of one row of A packed densely
    /// (the GEMV, M = 1): [`BlockArgs`] with `row_panels = rows = 1`, whose packed A is
    /// that row packed with `mr = 1` (`kgroups × kg` values, in the kernel's
    /// [`AFormat`]) rather than a panel of `mr` rows, 7 of 8 of them padding.
    /// `block` computes what [`Kernel::block`] computes on the same row packed in an
    /// `mr`-row panel, and `staged`, where given, what [`Kernel::block_with_stage`]
    /// computes.
    ///
    /// # Safety
    /// As [`Kernel::with_staged_block`], for that layout of A.
    pub const unsafe fn with_row(mut self, block: BlockFn, staged: Option<StagedBlockFn>) -> Kernel {
        self.row = Some(RowFns { block, staged });
        self
    }

    /// Whether the kernel has one-row entry points ([`Kernel::row_block`]).
    pub fn has_row(&self) -> bool {
        self.row.is_some()
    }

    /// The same kernel with one-row entry points for 4-bit weights
    /// ([`crate::pack::PackedB::try_new_nibbles`]), which unpack the nibbles in
    /// registers: [`BlockArgs`] with one row packed densely as for
    /// [`Kernel::with_row`] (u8 A), and `b` the 4-bit panels as packed, `kgroups`
    /// even, each panel's `kgroups · nr · kg / 2` bytes read. `block` and `staged`
    /// compute what the one-row entries compute on the same weights unpacked.
    ///
    /// # Safety
    /// As [`Kernel::with_row`], for that layout of B.
    pub const unsafe fn with_nibble_row(mut self, block: BlockFn, staged: Option<StagedBlockFn>) -> Kernel {
        self.nibble_row = Some(RowFns { block, staged });
        self
    }

    /// Whether the kernel has one-row entry points for 4-bit weights
    /// ([`Kernel::nibble_row_with_stage`]).
    pub fn has_nibble_row(&self) -> bool {
        self.nibble_row.is_some()
    }

    /// The same kernel with block entry points for 4-bit weights, which unpack the
    /// nibbles in registers: [`BlockArgs`] with `b` the 4-bit panels as packed
    /// ([`crate::pack::PackedB::try_new_nibbles`]) from an even k-group, `kgroups`
    /// even, each panel's `kgroups · nr · kg / 2` bytes read; A one byte per value
    /// (u8 or flipped). `block` and `staged` compute what [`Kernel::block`] and
    /// [`Kernel::block_with_stage`] compute on the same weights unpacked.
    ///
    /// # Safety
    /// As [`Kernel::with_staged_block`], for that layout of B.
    pub const unsafe fn with_nibble_block(mut self, block: BlockFn, staged: Option<StagedBlockFn>) -> Kernel {
        self.nibble_block = Some(RowFns { block, staged });
        self
    }

    /// Whether the kernel has block entry points for 4-bit weights
    /// ([`Kernel::nibble_block`]).
    pub fn has_nibble_block(&self) -> bool {
        self.nibble_block.is_some()
    }

    /// The same kernel, taking its block entry for 4-bit weights only for products of
    /// at most `rows` rows, and decoding the weights a block at a time into scratch
    /// above (for a kernel whose entry decodes in its tile loop, once per row panel:
    /// AMX's).
    pub const fn with_nibble_block_rows(mut self, rows: usize) -> Kernel {
        self.nibble_block_rows = rows;
        self
    }

    /// Whether a product of `m` rows with 4-bit weights runs on the kernel's block
    /// entry for them ([`Kernel::nibble_block`]), rather than on weights decoded a
    /// block at a time ([`Kernel::decode_nibbles`]).
    pub fn reads_nibbles(&self, m: usize) -> bool {
        self.has_nibble_block() && m <= self.nibble_block_rows
    }

    /// [`Kernel::block`] against 4-bit weights (see [`Kernel::with_nibble_block`]).
    ///
    /// # Panics
    /// If the kernel has no such entry, `kgroups` is odd, or as [`Kernel::block`]
    /// for 4-bit B.
    pub fn nibble_block(&self, args: BlockArgs<'_>) {
        let fns = self.nibble_block.expect("a kernel without a block entry for 4-bit weights");
        self.check_block_of(&args, true);
        // SAFETY: the kernel exists, so the CPU supports its instructions, and the
        // buffers were just checked against `BlockArgs` for 4-bit B.
        unsafe { (fns.block)(args) }
    }

    /// [`Kernel::block_with_stage`] against 4-bit weights.
    ///
    /// # Panics
    /// As [`Kernel::nibble_block`] and [`Kernel::block_with_stage`].
    pub fn nibble_block_with_stage(&self, args: BlockArgs<'_>, stage: EpilogueArgs<'_>) {
        let fns = self.nibble_block.expect("a kernel without a block entry for 4-bit weights");
        self.check_block_of(&args, true);
        stage.check_output();
        assert!(stage.rows == args.rows && stage.cols <= args.cols, "stage and block differ");
        match fns.staged.filter(|_| self.fuses(&stage)) {
            // SAFETY: as in `nibble_block`, and the output was just checked against
            // `EpilogueArgs` (all but `acc`, which a fused kernel does not read).
            Some(staged) => unsafe { staged(args, stage) },
            None => {
                let mut args = args;
                let (acc, acc_stride) = (std::mem::take(&mut args.acc), args.acc_stride);
                self.unfused(acc, acc_stride, stage, |acc| self.nibble_block(BlockArgs { acc, ..args }));
            }
        }
    }

    /// Whether the kernel reads A in place ([`Kernel::indirect_block`]).
    pub fn has_indirect(&self) -> bool {
        self.indirect.is_some()
    }

    /// Whether the kernel fuses the output stage into its tiles
    /// ([`Kernel::block_with_stage`]).
    pub fn has_staged_block(&self) -> bool {
        self.staged.is_some()
    }

    /// The same kernel with a fast path (see [`Kernel`]), exact where `when` says.
    ///
    /// # Safety
    /// `fast` must compute the same accumulators as `self` wherever `when` holds, and
    /// satisfy the contract of [`Kernel::new`] on every CPU where `self` does.
    ///
    /// # Panics
    /// If the tiles differ, or `fast` has a fast path of its own.
    pub const unsafe fn with_fast_path(mut self, fast: Kernel, when: FastWhen) -> Kernel {
        assert!(
            fast.tile.mr == self.tile.mr
                && fast.tile.nr == self.tile.nr
                && fast.tile.kg == self.tile.kg
                && fast.tile.ka == self.tile.ka
        );
        assert!(fast.fast.is_none());
        self.fast = Some(FastPath {
            name: fast.name,
            block: fast.block,
            staged: fast.staged,
            indirect: fast.indirect,
            row: fast.row,
            nibble_row: fast.nibble_row,
            nibble_block: fast.nibble_block,
            fuses: fast.fuses,
            a_format: fast.a_format,
            pack_a: fast.pack_a,
            row_sum: fast.row_sum,
            when,
        });
        self
    }

    /// How packed A is laid out for this kernel.
    pub fn a_format(&self) -> AFormat {
        self.a_format
    }

    /// The fast path, if the kernel has one, as a kernel of its own.
    pub fn fast_path(&self) -> Option<Kernel> {
        let f = self.fast?;
        Some(Kernel {
            name: f.name,
            block: f.block,
            staged: f.staged,
            indirect: f.indirect,
            row: f.row,
            nibble_row: f.nibble_row,
            nibble_block: f.nibble_block,
            fuses: f.fuses,
            a_format: f.a_format,
            pack_a: f.pack_a,
            row_sum: f.row_sum,
            fast: None,
            ..*self
        })
    }

    /// Where the fast path is exact, if the kernel has one.
    pub fn fast_when(&self) -> Option<FastWhen> {
        self.fast.map(|f| f.when)
    }

    /// The kernel to run on a row block with weights `b`: the fast path where it is
    /// exact for them, else the kernel itself. `max_activation` gives the block's
    /// largest activation; it is called only when the answer depends on it.
    pub fn for_block(&self, b: &crate::pack::PackedB, max_activation: impl FnOnce() -> u8) -> Kernel {
        let Some(fast) = self.fast_path() else { return *self };
        let exact = match self.fast_when() {
            Some(FastWhen::PairSumsFitI16) => b.pair_sums_fit_i16() || max_activation() <= 127,
            Some(FastWhen::NoMinWeight) => b.excludes_i8_min(),
            None => false,
        };
        if exact { fast } else { self.without_fast_path() }
    }

    /// Whether [`Kernel::for_block`] may look at the activations for weights `b`.
    pub fn fast_path_depends_on_activations(&self, b: &crate::pack::PackedB) -> bool {
        self.fast_when() == Some(FastWhen::PairSumsFitI16) && !b.pair_sums_fit_i16()
    }

    /// The same kernel without its fast path (tests use it to run the exact path on
    /// data that would take the fast one).
    pub fn without_fast_path(self) -> Kernel {
        Kernel { fast: None, ..self }
    }

    /// The kernel's name: tile, K-group and ISA, as in `4x32c2-portable`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The register tile.
    pub fn tile(&self) -> Tile {
        self.tile
    }

    /// The cache blocking.
    pub fn blocking(&self) -> Blocking {
        self.blocking
    }

    /// The same kernel, running the last K block of a row block in strips of row
    /// panels whose packed A holds at most `bytes` (at least one panel; the default is
    /// [`crate::driver::STRIP_A_BYTES`], 16 KiB, which keeps a strip's A in L1 while
    /// each B panel slice streams past it). A kernel whose B panel slices are what
    /// should stay in L1 across the row panels (AMX's) takes a larger strip.
    pub const fn with_strip_bytes(mut self, bytes: usize) -> Kernel {
        self.strip_bytes = bytes;
        self
    }

    /// The most packed A one strip of the last K block holds (see
    /// [`Kernel::with_strip_bytes`]).
    pub fn strip_bytes(&self) -> usize {
        self.strip_bytes
    }

    /// The same kernel with other cache blocking (tests use tiny blocks to reach every
    /// loop boundary with small problems).
    ///
    /// # Panics
    /// If the blocking is not a whole number of tiles, or any size is zero.
    pub fn with_blocking(self, blocking: Blocking) -> Kernel {
        // `Kernel::new` checks the blocking against the tile; every other field is
        // `self`'s.
        // SAFETY: the entry points are unchanged, so the CPU support that made `self`
        // constructible still holds; blocking only changes which arguments they get.
        let checked = unsafe { Kernel::new(self.name, self.tile, blocking, self.block, self.epilogue) };
        Kernel { blocking: checked.blocking, ..self }
    }

    /// Accumulates a block.
    ///
    /// # Panics
    /// If the buffers are smaller than [`BlockArgs`] says they must be.
    pub fn block(&self, args: BlockArgs<'_>) {
        self.check_block(&args);
        // SAFETY: the kernel exists, so the CPU supports its instructions (see
        // `Kernel::new`), and the buffers were just checked against `BlockArgs`.
        unsafe { (self.block)(args) }
    }

    /// The last K block of a block, with the output stage: what [`Kernel::block`]
    /// followed by [`Kernel::epilogue`] on rows `0..stage.rows` and columns
    /// `0..stage.cols` of the accumulators computes, with the stage applied to each
    /// tile as soon as its sums are complete (`stage.acc` is not read: the sums come
    /// from the tiles, plus `args.acc` when `args.accumulate`). Kernels without a
    /// fused version run exactly that pair.
    ///
    /// # Panics
    /// If the buffers are smaller than [`BlockArgs`] and [`EpilogueArgs`] say they
    /// must be, or the stage's rows are not the block's, or it has columns past it.
    pub fn block_with_stage(&self, args: BlockArgs<'_>, stage: EpilogueArgs<'_>) {
        self.check_block(&args);
        stage.check_output();
        assert!(stage.rows == args.rows && stage.cols <= args.cols, "stage and block differ");
        match self.staged.filter(|_| self.fuses(&stage)) {
            // SAFETY: as in `block`, and the output was just checked against
            // `EpilogueArgs` (all but `acc`, which a fused kernel does not read).
            Some(staged) => unsafe { staged(args, stage) },
            None => {
                let mut args = args;
                let (acc, acc_stride) = (std::mem::take(&mut args.acc), args.acc_stride);
                self.unfused(acc, acc_stride, stage, |acc| self.block(BlockArgs { acc, ..args }));
            }
        }
    }

    /// Accumulates a block of one row packed densely (see [`Kernel::with_row`]).
    ///
    /// # Panics
    /// If the kernel has no one-row entry ([`Kernel::has_row`]), the block is not one
    /// row, or the buffers are smaller than [`BlockArgs`] says for that layout.
    pub fn row_block(&self, args: BlockArgs<'_>) {
        let fns = self.row.expect("a kernel without a one-row entry");
        self.check_row(&args);
        // SAFETY: the kernel exists, so the CPU supports its instructions (see
        // `Kernel::new`), and the buffers were just checked against `BlockArgs` for one
        // densely packed row.
        unsafe { (fns.block)(args) }
    }

    /// [`Kernel::block_with_stage`] for a block of one row packed densely (see
    /// [`Kernel::with_row`]).
    ///
    /// # Panics
    /// As [`Kernel::row_block`] and [`Kernel::block_with_stage`].
    pub fn row_with_stage(&self, args: BlockArgs<'_>, stage: EpilogueArgs<'_>) {
        let fns = self.row.expect("a kernel without a one-row entry");
        self.check_row(&args);
        stage.check_output();
        assert!(stage.rows == args.rows && stage.cols <= args.cols, "stage and block differ");
        match fns.staged.filter(|_| self.fuses(&stage)) {
            // SAFETY: as in `row_block`, and the output was just checked against
            // `EpilogueArgs` (all but `acc`, which a fused kernel does not read).
            Some(staged) => unsafe { staged(args, stage) },
            None => {
                let mut args = args;
                let (acc, acc_stride) = (std::mem::take(&mut args.acc), args.acc_stride);
                self.unfused(acc, acc_stride, stage, |acc| self.row_block(BlockArgs { acc, ..args }));
            }
        }
    }

    /// [`Kernel::row_block`] against 4-bit weights (see [`Kernel::with_nibble_row`]).
    ///
    /// # Panics
    /// If the kernel has no such entry, `kgroups` is odd, or as [`Kernel::row_block`]
    /// for 4-bit B.
    pub fn nibble_row_block(&self, args: BlockArgs<'_>) {
        let fns = self.nibble_row.expect("a kernel without a one-row entry for 4-bit weights");
        self.check_row_of(&args, true);
        // SAFETY: the kernel exists, so the CPU supports its instructions, and the
        // buffers were just checked against `BlockArgs` for one dense row and 4-bit B.
        unsafe { (fns.block)(args) }
    }

    /// [`Kernel::row_with_stage`] against 4-bit weights (see [`Kernel::with_nibble_row`]).
    ///
    /// # Panics
    /// As [`Kernel::nibble_row_block`] and [`Kernel::block_with_stage`].
    pub fn nibble_row_with_stage(&self, args: BlockArgs<'_>, stage: EpilogueArgs<'_>) {
        let fns = self.nibble_row.expect("a kernel without a one-row entry for 4-bit weights");
        self.check_row_of(&args, true);
        stage.check_output();
        assert!(stage.rows == args.rows && stage.cols <= args.cols, "stage and block differ");
        match fns.staged.filter(|_| self.fuses(&stage)) {
            // SAFETY: as in `nibble_row_block`, and the output was just checked against
            // `EpilogueArgs` (all but `acc`, which a fused kernel does not read).
            Some(staged) => unsafe { staged(args, stage) },
            None => {
                let mut args = args;
                let (acc, acc_stride) = (std::mem::take(&mut args.acc), args.acc_stride);
                self.unfused(acc, acc_stride, stage, |acc| self.nibble_row_block(BlockArgs { acc, ..args }));
            }
        }
    }

    fn check_row(&self, args: &BlockArgs<'_>) {
        self.check_row_of(args, false);
    }

    fn check_row_of(&self, args: &BlockArgs<'_>, nibbles: bool) {
        let t = self.tile;
        assert!(args.row_panels == 1 && args.rows == 1, "a one-row block");
        assert!(!nibbles || (args.kgroups.is_multiple_of(2) && self.a_format.bytes() == 1), "4-bit pairs, byte A");
        let a_len = args.kgroups * t.kg * self.a_format.bytes();
        let b_len = match args.col_panels {
            0 => 0,
            panels => (panels - 1) * args.b_panel_stride + args.kgroups * t.nr * t.kg / if nibbles { 2 } else { 1 },
        };
        assert!(args.a.len() >= a_len, "packed A row too short");
        assert!(args.b.len() >= b_len, "packed B block too short");
        assert!(args.acc_stride >= args.col_panels * t.nr, "accumulator stride");
        assert!(args.acc.len() >= args.acc_stride, "accumulators");
        assert!(args.cols <= args.col_panels * t.nr, "columns beyond the panels");
    }

    /// A stage the kernel does not fuse into its tiles: `block` writes the
    /// accumulators, then the epilogue runs over them.
    fn unfused(&self, acc: &mut [i32], acc_stride: usize, stage: EpilogueArgs<'_>, block: impl FnOnce(&mut [i32])) {
        block(&mut *acc);
        self.epilogue(EpilogueArgs { acc, acc_stride, ..stage });
    }

    fn check_block(&self, args: &BlockArgs<'_>) {
        self.check_block_of(args, false);
    }

    fn check_block_of(&self, args: &BlockArgs<'_>, nibbles: bool) {
        let t = self.tile;
        assert!(!nibbles || (args.kgroups.is_multiple_of(2) && self.a_format.bytes() == 1), "4-bit pairs, byte A");
        let a_len = args.row_panels * args.kgroups * t.mr * t.kg * self.a_format.bytes();
        let b_len = match args.col_panels {
            0 => 0,
            panels => (panels - 1) * args.b_panel_stride + args.kgroups * t.nr * t.kg / if nibbles { 2 } else { 1 },
        };
        assert!(args.a.len() >= a_len, "packed A block too short");
        assert!(args.b.len() >= b_len, "packed B block too short");
        assert!(args.acc_stride >= args.col_panels * t.nr, "accumulator stride");
        assert!(args.acc.len() >= args.row_panels * t.mr * args.acc_stride, "accumulators");
        assert!(args.rows <= args.row_panels * t.mr, "rows beyond the panels");
        assert!(args.cols <= args.col_panels * t.nr, "columns beyond the panels");
    }

    /// Computes an indirect block into its accumulators.
    ///
    /// # Panics
    /// If the kernel has no indirect entry ([`Kernel::has_indirect`]), a run lies
    /// outside its buffer, or a buffer is smaller than [`IndirectArgs`] says.
    pub fn indirect_block(&self, args: IndirectArgs<'_>) {
        args.a.check(args.rows);
        // SAFETY: every run was just checked.
        unsafe { self.indirect_block_unchecked(args) }
    }

    /// [`Kernel::indirect_block`] without the scan of the runs' bounds (the rest is
    /// checked), for offsets built to be in bounds ([`crate::indirect`]).
    ///
    /// # Safety
    /// Every run of rows `0..args.rows` lies within its buffer ([`IndirectA`]).
    pub(crate) unsafe fn indirect_block_unchecked(&self, args: IndirectArgs<'_>) {
        let fns = self.indirect.expect("a kernel without an indirect entry");
        self.check_indirect(&args);
        // SAFETY: the kernel exists, so the CPU supports its instructions; the buffers
        // were just checked against `IndirectArgs`, and the runs by the caller.
        unsafe { (fns.block)(args) }
    }

    /// An indirect block with the output stage: what [`Kernel::indirect_block`]
    /// followed by [`Kernel::epilogue`] on rows `0..stage.rows` and columns
    /// `0..stage.cols` computes, fused into each tile where the kernel can.
    ///
    /// # Panics
    /// As [`Kernel::indirect_block`] and [`Kernel::block_with_stage`].
    pub fn indirect_with_stage(&self, args: IndirectArgs<'_>, stage: EpilogueArgs<'_>) {
        args.a.check(args.rows);
        // SAFETY: every run was just checked.
        unsafe { self.indirect_with_stage_unchecked(args, stage) }
    }

    /// [`Kernel::indirect_with_stage`] without the scan of the runs' bounds.
    ///
    /// # Safety
    /// As [`Kernel::indirect_block_unchecked`].
    pub(crate) unsafe fn indirect_with_stage_unchecked(&self, args: IndirectArgs<'_>, stage: EpilogueArgs<'_>) {
        let fns = self.indirect.expect("a kernel without an indirect entry");
        self.check_indirect(&args);
        stage.check_output();
        assert!(stage.rows == args.rows && stage.cols <= args.cols, "stage and block differ");
        match fns.staged.filter(|_| self.fuses(&stage)) {
            // SAFETY: as in `indirect_block_unchecked`, and the output was just checked
            // against `EpilogueArgs` (all but `acc`, which a fused kernel does not read).
            Some(staged) => unsafe { staged(args, stage) },
            None => {
                let mut args = args;
                let (acc, acc_stride) = (std::mem::take(&mut args.acc), args.acc_stride);
                self.unfused(acc, acc_stride, stage, |acc| {
                    // SAFETY: forwarded from this function's contract.
                    unsafe { self.indirect_block_unchecked(IndirectArgs { acc, ..args }) }
                });
            }
        }
    }

    fn check_indirect(&self, args: &IndirectArgs<'_>) {
        let t = self.tile;
        assert!(t.kg == 4 && self.a_format == AFormat::U8, "indirect A is u8 in K-groups of 4");
        assert!(args.a.offsets.len() >= args.rows * args.a.segments, "indirection offsets");
        let kgroups = args.a.segments * args.a.seg_groups;
        let b_len = match args.col_panels {
            0 => 0,
            panels => (panels - 1) * args.b_panel_stride + kgroups * t.nr * t.kg,
        };
        assert!(args.b.len() >= b_len, "packed B block too short");
        assert!(args.acc_stride >= args.col_panels * t.nr, "accumulator stride");
        assert!(args.acc.len() >= args.rows.div_ceil(t.mr) * t.mr * args.acc_stride, "accumulators");
        assert!(args.cols <= args.col_panels * t.nr, "columns beyond the panels");
    }

    /// Applies the output stage to a block and stores it.
    ///
    /// # Panics
    /// If the buffers are smaller than [`EpilogueArgs`] says they must be.
    pub fn epilogue(&self, args: EpilogueArgs<'_>) {
        args.check();
        // SAFETY: the kernel exists, so the CPU supports its instructions, and the
        // buffers were just checked against `EpilogueArgs`.
        unsafe { (self.epilogue)(args) }
    }
}
