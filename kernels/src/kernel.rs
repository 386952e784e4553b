//! What the blocked loop nest needs from one ISA's implementation.

use crate::output::EpilogueArgs;

/// The register tile of a microkernel: it computes `mr × nr` accumulators, consuming
/// K in groups of `kg` (the "c" in names like `4x32c2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tile {
    /// Rows of A (and C) per microkernel call.
    pub mr: usize,
    /// Columns of B (and C) per microkernel call.
    pub nr: usize,
    /// Consecutive k values packed together for one column (or row).
    pub kg: usize,
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
/// Packed A holds `row_panels` panels of `kgroups × mr × kg` values each (bytes, or
/// little-endian i16 for a kernel with [`Kernel::wide_a`]), of which the first `rows`
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

/// One ISA's GEMM implementation: its tile, its blocking and its two entry points.
///
/// A `Kernel` can only exist where its instructions can run: the constructor is
/// `unsafe` and each ISA module hands out its kernel through a fallible function
/// that detects the CPU features first. Calling through a `Kernel` is therefore safe.
///
/// A kernel may carry a *fast path*: a second kernel with the same tile and blocking
/// that is exact only when no u8 × i8 pair sum leaves i16 (`vpmaddubsw`). The driver
/// runs it on a block when the packed weights prove that for every activation
/// ([`crate::pack::PackedB::pair_sums_fit_i16`]) or when the block's activations are
/// all ≤ 127, and runs the kernel itself otherwise.
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    name: &'static str,
    tile: Tile,
    blocking: Blocking,
    block: BlockFn,
    epilogue: EpilogueFn,
    wide_a: bool,
    fast: Option<FastPath>,
}

/// What a fast path changes: its name, its block function and its A format. The tile,
/// blocking and epilogue are the exact kernel's.
#[derive(Clone, Copy, Debug)]
struct FastPath {
    name: &'static str,
    block: BlockFn,
    wide_a: bool,
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
        assert!(tile.mr > 0 && tile.nr > 0 && tile.kg > 0);
        assert!(blocking.mc > 0 && blocking.mc.is_multiple_of(tile.mr));
        assert!(blocking.kc > 0 && blocking.kc.is_multiple_of(tile.kg));
        assert!(blocking.nc > 0 && blocking.nc.is_multiple_of(tile.nr));
        Kernel { name, tile, blocking, block, epilogue, wide_a: false, fast: None }
    }

    /// The same kernel, reading packed A as little-endian i16 (widened once at packing
    /// time rather than in the inner loop).
    pub const fn with_wide_a(mut self) -> Kernel {
        self.wide_a = true;
        self
    }

    /// The same kernel with a fast path (see [`Kernel`]).
    ///
    /// # Safety
    /// `fast` must compute the same accumulators as `self` whenever every pair sum
    /// `a0·b0 + a1·b1` of its K-groups fits in i16, and satisfy the contract of
    /// [`Kernel::new`] on every CPU where `self` does.
    ///
    /// # Panics
    /// If the tiles or blockings differ, or `fast` has a fast path of its own.
    pub const unsafe fn with_fast_path(mut self, fast: Kernel) -> Kernel {
        assert!(fast.tile.mr == self.tile.mr && fast.tile.nr == self.tile.nr && fast.tile.kg == self.tile.kg);
        assert!(fast.fast.is_none());
        self.fast = Some(FastPath { name: fast.name, block: fast.block, wide_a: fast.wide_a });
        self
    }

    /// Whether packed A holds i16 rather than u8 values.
    pub fn wide_a(&self) -> bool {
        self.wide_a
    }

    /// The fast path, if the kernel has one, as a kernel of its own.
    pub fn fast_path(&self) -> Option<Kernel> {
        let f = self.fast?;
        Some(Kernel { name: f.name, block: f.block, wide_a: f.wide_a, fast: None, ..*self })
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

    /// The same kernel with other cache blocking (tests use tiny blocks to reach every
    /// loop boundary with small problems).
    ///
    /// # Panics
    /// If the blocking is not a whole number of tiles, or any size is zero.
    pub fn with_blocking(self, blocking: Blocking) -> Kernel {
        // SAFETY: the entry points are unchanged, so the CPU support that made `self`
        // constructible still holds; blocking only changes which arguments they get.
        let kernel = unsafe { Kernel::new(self.name, self.tile, blocking, self.block, self.epilogue) };
        Kernel { wide_a: self.wide_a, fast: self.fast, ..kernel }
    }

    /// Accumulates a block.
    ///
    /// # Panics
    /// If the buffers are smaller than [`BlockArgs`] says they must be.
    pub fn block(&self, args: BlockArgs<'_>) {
        let t = self.tile;
        let a_len = args.row_panels * args.kgroups * t.mr * t.kg * if self.wide_a { 2 } else { 1 };
        let b_len = match args.col_panels {
            0 => 0,
            panels => (panels - 1) * args.b_panel_stride + args.kgroups * t.nr * t.kg,
        };
        assert!(args.a.len() >= a_len, "packed A block too short");
        assert!(args.b.len() >= b_len, "packed B block too short");
        assert!(args.acc_stride >= args.col_panels * t.nr, "accumulator stride");
        assert!(args.acc.len() >= args.row_panels * t.mr * args.acc_stride, "accumulators");
        assert!(args.rows <= args.row_panels * t.mr, "rows beyond the panels");
        // SAFETY: the kernel exists, so the CPU supports its instructions (see
        // `Kernel::new`), and the buffers were just checked against `BlockArgs`.
        unsafe { (self.block)(args) }
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
