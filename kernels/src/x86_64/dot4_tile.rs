//! One kernel body for every x86 kernel built on a 4-deep u8 × i8 dot product per i32
//! lane: AVX2's fast path (`vpmaddubsw` + `vpmaddwd`), AVX-VNNI (`vpdpbusd` on ymm)
//! and AVX-512 VNNI (`vpdpbusd` on zmm). Only [`Dot4`], a handful of one-line
//! methods per ISA, differs between them, so the AVX2 instance that runs on every CI
//! machine also checks the loops, the addressing and the write-out the VNNI kernels
//! use.
//!
//! Layouts (see [`crate::pack`]): packed B holds, per k-group, `NR = NV · LANES`
//! columns of 4 consecutive i8, so one vector load brings `LANES` columns × 4 k; packed
//! A holds, per k-group, `MR` rows of 4 consecutive u8 (or i16, [`Dot4::A_BYTES`]),
//! broadcast a row at a time.
//!
//! ```text
//!            B group g: │ c0: k0..4 │ c1: k0..4 │ … │ c(NR−1) │   NV vectors
//!                          └── vector 0 (LANES columns) ──┘ …
//!  A row r of group g: [a0 a1 a2 a3] → broadcast to every lane
//!
//!  acc[r][v] (lane l) += Σ_{i<4} a_i · B[g][v·LANES + l][i]      for r < R, v < NV
//! ```
//!
//! The accumulators stay in registers for the whole K loop: `R · NV` of them, plus
//! `NV` for B and one broadcast (AVX2 6 × 1 and AVX-VNNI 6 × 2 in 16 ymm, AVX-512
//! 8 × 3 in 32 zmm). Edges need no masks: packed B is padded to whole panels with zero
//! columns and the accumulator block has room for them, and a panel's padding rows
//! are never computed (`R` real rows only).
//!
//! One row (a GEMV, or a panel's single real row) gives each vector's accumulator one
//! dot product per k-group, each waiting for the last; [`sums_row`] splits K over
//! independent partial sums instead, added at the end. The GEMV reads A as one dense
//! row ([`RowA`], `Kernel::with_row`) rather than a panel of `MR` rows, all but one
//! padding.

use crate::kernel::{BlockArgs, IndirectA, IndirectArgs};

/// A vector of i32 lanes that can accumulate 4-deep u8 × i8 dot products.
///
/// The methods carry no `#[target_feature]` (so they can be `#[inline(always)]`):
/// they are only called from [`block`], which is inlined into a function compiled
/// with the ISA's features.
pub(super) trait Dot4: Copy {
    /// i32 lanes per vector: columns per vector of packed B.
    const LANES: usize;

    /// Bytes of one row's k-group in packed A: 4 u8, or 4 i16 for a kernel that
    /// widens A once at packing time (AVX2's exact `vpmaddwd`). A read in place is
    /// always u8 (4).
    const A_BYTES: usize = 4;

    /// k-groups per iteration of a tile's loop over packed A: with 4, the loop's own
    /// scalar instructions (pointer increments, counter, branch) take fewer of the
    /// issue slots the multiply-accumulates need (about 3% on AVX-512 VNNI,
    /// measured); a kernel whose tile fills the registers unrolls less, since the
    /// compiler then hoists loads of later groups and spills accumulators.
    const UNROLL: usize = 4;

    /// All lanes zero.
    ///
    /// # Safety
    /// The CPU has the ISA's features.
    unsafe fn zero() -> Self;

    /// `LANES · 4` bytes of packed B.
    ///
    /// # Safety
    /// The CPU has the ISA's features, and `p` points to that many readable bytes.
    unsafe fn load_b(p: *const i8) -> Self;

    /// One row's k-group of packed A (`A_BYTES` bytes), repeated in every lane.
    ///
    /// # Safety
    /// The CPU has the ISA's features, and `p` points to `A_BYTES` readable bytes.
    unsafe fn splat_a(p: *const u8) -> Self;

    /// `LANES · 4` bytes of 4-bit packed B (see `PackedB::try_new_nibbles`): the low
    /// nibbles (one k-group of `LANES` columns × 4 k, values in [0, 15]) and the high
    /// ones (the next k-group), each as [`Dot4::load_b`] would load 8-bit weights.
    /// Kernels override it with a mask and a shift in registers; this default spreads
    /// them through the stack.
    ///
    /// # Safety
    /// As [`Dot4::load_b`].
    #[inline(always)]
    unsafe fn load_b_nibbles(p: *const i8) -> (Self, Self) {
        let (mut low, mut high) = ([0i8; 64], [0i8; 64]);
        for i in 0..Self::LANES * 4 {
            // SAFETY: `LANES · 4 ≤ 64` readable bytes at `p` (the contract).
            let b = unsafe { p.add(i).read() } as u8;
            low[i] = (b & 0x0f) as i8;
            high[i] = (b >> 4) as i8;
        }
        // SAFETY: forwarded from this function's contract; both arrays hold the bytes.
        unsafe { (Self::load_b(low.as_ptr()), Self::load_b(high.as_ptr())) }
    }

    /// One half of [`Dot4::load_b_nibbles`]: the low nibbles, or the high ones.
    ///
    /// # Safety
    /// As [`Dot4::load_b`].
    #[inline(always)]
    unsafe fn load_b_nibble(p: *const i8, high: bool) -> Self {
        // SAFETY: forwarded from this function's contract.
        let (low, hi) = unsafe { Self::load_b_nibbles(p) };
        if high { hi } else { low }
    }

    /// `self + Σ_{i<4} a_i · b_i` per lane, wrapping in i32. For AVX2 only where no
    /// pair sum `a_0·b_0 + a_1·b_1` leaves i16 (the driver's check).
    ///
    /// # Safety
    /// The CPU has the ISA's features.
    unsafe fn dot(self, a: Self, b: Self) -> Self;

    /// `self + other` per lane, wrapping in i32.
    ///
    /// # Safety
    /// The CPU has the ISA's features.
    unsafe fn add(self, other: Self) -> Self;

    /// Stores the lanes at `p`, adding to what is there (wrapping) if `accumulate`.
    ///
    /// # Safety
    /// The CPU has the ISA's features, and `p` points to `LANES` writable i32.
    unsafe fn store(self, p: *mut i32, accumulate: bool);
}

/// Where each tile's sums go: the accumulator block ([`StoreAcc`]), or an output stage
/// fused into the tiles.
pub(super) trait Sink<V: Dot4, const NV: usize> {
    /// Called before the tiles of column panel `jp` (columns `jp · NV·LANES..`).
    ///
    /// # Safety
    /// The CPU has `V`'s features.
    unsafe fn panel(&mut self, jp: usize);

    /// The sums of rows `row0..row0 + R` of the current column panel, all real rows, in
    /// its first `NU ≤ NV` vectors: the panel's real columns lie within them (the
    /// rest of the panel is padding, not computed).
    ///
    /// # Safety
    /// The CPU has `V`'s features, and the rows lie within the block.
    unsafe fn tile<const R: usize, const NU: usize>(&mut self, row0: usize, c: &[[V; NU]; R]);

    /// What every row's sums of the current panel start from, per vector (zero; a
    /// fused stage may start them at its per-column term, saving an add per vector).
    ///
    /// # Safety
    /// The CPU has `V`'s features.
    #[inline(always)]
    unsafe fn start<const NU: usize>(&self) -> [V; NU] {
        // SAFETY: the CPU has V's features (the contract).
        unsafe { [V::zero(); NU] }
    }
}

/// The plain sink: `acc (+)= sums`, row-major with `acc_stride` columns.
pub(super) struct StoreAcc<'a> {
    acc: &'a mut [i32],
    acc_stride: usize,
    accumulate: bool,
    col0: usize,
}

impl<V: Dot4, const NV: usize> Sink<V, NV> for StoreAcc<'_> {
    #[inline(always)]
    unsafe fn panel(&mut self, jp: usize) {
        self.col0 = jp * NV * V::LANES;
    }

    #[inline(always)]
    unsafe fn tile<const R: usize, const NU: usize>(&mut self, row0: usize, c: &[[V; NU]; R]) {
        let acc_tile = &mut self.acc[row0 * self.acc_stride + self.col0..];
        assert!(acc_tile.len() >= (R.max(1) - 1) * self.acc_stride + NU * V::LANES, "accumulator tile");
        for (r, cr) in c.iter().enumerate() {
            for (v, cv) in cr.iter().enumerate() {
                // SAFETY: the CPU has V's features (the contract); row r < R of the tile
                // holds NU·LANES values from column 0 (asserted just above).
                unsafe { cv.store(acc_tile.as_mut_ptr().add(r * self.acc_stride + v * V::LANES), self.accumulate) };
            }
        }
    }
}

/// Every tile of a block into the accumulators; see [`block_into`].
///
/// # Safety
/// The CPU has `V`'s features, and the caller is compiled with them (this function is
/// inlined into it); `args` satisfies [`BlockArgs`] for a kernel with tile
/// `MR × NV·LANES`, K-group 4 and u8 A (checked by `Kernel::block`).
#[inline(always)]
pub(super) unsafe fn block<V: Dot4, const MR: usize, const NV: usize>(args: BlockArgs<'_>) {
    let BlockArgs { a, b, b_panel_stride, row_panels, rows, col_panels, cols, kgroups, acc, acc_stride, accumulate } =
        args;
    let mut sink = StoreAcc { acc, acc_stride, accumulate, col0: 0 };
    let panels = Panels { a: PackedA::<false> { a, kgroups }, b, b_panel_stride, row_panels, rows, col_panels, cols };
    // SAFETY: forwarded from this function's contract.
    unsafe { block_into::<V, MR, NV, _, _>(panels, &mut sink) }
}

/// Every tile of an indirect block into the accumulators; see [`block_into`].
///
/// # Safety
/// As [`block`], for `args` satisfying [`IndirectArgs`] (checked by
/// `Kernel::indirect_block`).
#[inline(always)]
pub(super) unsafe fn indirect_block<V: Dot4, const MR: usize, const NV: usize>(args: IndirectArgs<'_>) {
    let IndirectArgs { a, b, b_panel_stride, rows, col_panels, cols, acc, acc_stride } = args;
    let mut sink = StoreAcc { acc, acc_stride, accumulate: false, col0: 0 };
    let panels = Panels::indirect::<MR>(a, b, b_panel_stride, rows, col_panels, cols);
    // SAFETY: forwarded from this function's contract.
    unsafe { block_into::<V, MR, NV, _, _>(panels, &mut sink) }
}

/// Every panel of a one-row block whose A is packed as one dense row (`kgroups × 4`
/// bytes: the GEMV's layout, see `Kernel::with_row`) into the accumulators; see
/// [`block_into`].
///
/// # Safety
/// As [`block`], for `args` satisfying [`BlockArgs`] with one row (`row_panels = 1`,
/// `rows = 1`) packed with `mr = 1` (checked by `Kernel::row_block`).
#[inline(always)]
pub(super) unsafe fn row_block<V: Dot4, const MR: usize, const NV: usize>(args: BlockArgs<'_>) {
    let BlockArgs { a, b, b_panel_stride, col_panels, cols, kgroups, acc, acc_stride, accumulate, .. } = args;
    let mut sink = StoreAcc { acc, acc_stride, accumulate, col0: 0 };
    let panels =
        Panels { a: RowA::<false> { a, kgroups }, b, b_panel_stride, row_panels: 1, rows: 1, col_panels, cols };
    // SAFETY: forwarded from this function's contract.
    unsafe { block_into::<V, MR, NV, _, _>(panels, &mut sink) }
}

/// Every panel of a one-row block against 4-bit B (see [`RowA`] with `NIB`) into the
/// accumulators; see [`block_into`].
///
/// # Safety
/// As [`row_block`], with B 4-bit: `b` holds `(col_panels − 1) · b_panel_stride +
/// kgroups · NR · 2` bytes and `kgroups` is even (checked by `Kernel::nibble_row_block`).
#[inline(always)]
pub(super) unsafe fn row_nibbles_block<V: Dot4, const MR: usize, const NV: usize>(args: BlockArgs<'_>) {
    let BlockArgs { a, b, b_panel_stride, col_panels, cols, kgroups, acc, acc_stride, accumulate, .. } = args;
    let mut sink = StoreAcc { acc, acc_stride, accumulate, col0: 0 };
    let panels = Panels { a: RowA::<true> { a, kgroups }, b, b_panel_stride, row_panels: 1, rows: 1, col_panels, cols };
    // SAFETY: forwarded from this function's contract.
    unsafe { block_into::<V, MR, NV, _, _>(panels, &mut sink) }
}

/// Every tile of a block against 4-bit B (see [`PackedA`] with `NIB`) into the
/// accumulators; see [`block_into`].
///
/// # Safety
/// As [`block`], with B 4-bit: each panel `kgroups · NR · 2` bytes and `kgroups` even
/// (checked by `Kernel::nibble_block`).
#[inline(always)]
pub(super) unsafe fn nibble_block<V: Dot4, const MR: usize, const NV: usize>(args: BlockArgs<'_>) {
    let BlockArgs { a, b, b_panel_stride, row_panels, rows, col_panels, cols, kgroups, acc, acc_stride, accumulate } =
        args;
    let mut sink = StoreAcc { acc, acc_stride, accumulate, col0: 0 };
    let panels = Panels { a: PackedA::<true> { a, kgroups }, b, b_panel_stride, row_panels, rows, col_panels, cols };
    // SAFETY: forwarded from this function's contract.
    unsafe { block_into::<V, MR, NV, _, _>(panels, &mut sink) }
}

/// The operands of a block (see [`BlockArgs`]): A as a [`TileA`], B packed.
pub(super) struct Panels<'a, A> {
    pub a: A,
    pub b: &'a [i8],
    pub b_panel_stride: usize,
    pub row_panels: usize,
    pub rows: usize,
    pub col_panels: usize,
    pub cols: usize,
}

impl<'a> Panels<'a, Indirect<'a>> {
    /// The operands of an indirect block.
    pub(super) fn indirect<const MR: usize>(
        a: IndirectA<'a>,
        b: &'a [i8],
        b_panel_stride: usize,
        rows: usize,
        col_panels: usize,
        cols: usize,
    ) -> Self {
        let a = Indirect {
            input: a.input.as_ptr(),
            input_len: a.input.len(),
            pad: a.pad.as_ptr(),
            offsets: a.offsets,
            segments: a.segments,
            seg_groups: a.seg_groups,
        };
        Panels { a, b, b_panel_stride, row_panels: rows.div_ceil(MR), rows, col_panels, cols }
    }
}

/// Where a tile's rows of A come from, and how its sums are computed over K.
pub(super) trait TileA {
    /// Whether B is 4-bit (two k-groups in each group's room), half the bytes.
    const B_NIBBLES: bool = false;

    /// k-groups of K (the B panels' depth).
    fn kgroups(&self) -> usize;

    /// `Σ_g A[r, g] · B[g]` for rows `row0..row0 + R` (row panel `row0 / MR`) and the
    /// first `NU` vectors of a B panel of `NV`, wrapping in i32. `R > MR` and `NU > NV`
    /// never happen (the callers' bounds); such instances return `start`.
    ///
    /// # Safety
    /// The CPU has `V`'s features; the rows are real rows of the block and `b` holds
    /// `kgroups` groups of `NV · LANES · 4` bytes.
    unsafe fn sums<V: Dot4, const MR: usize, const R: usize, const NU: usize, const NV: usize>(
        &self,
        row0: usize,
        b: *const i8,
        start: [V; NU],
    ) -> [[V; NU]; R];
}

/// Packed A: panels of `MR` rows, `kgroups × MR × A_BYTES` bytes each; against 4-bit
/// B where `NIB` (each pair of k-groups in one group's room, the first in the low
/// nibbles: `PackedB::try_new_nibbles`; `kgroups` even).
pub(super) struct PackedA<'a, const NIB: bool> {
    pub a: &'a [u8],
    pub kgroups: usize,
}

impl<const NIB: bool> TileA for PackedA<'_, NIB> {
    const B_NIBBLES: bool = NIB;

    #[inline(always)]
    fn kgroups(&self) -> usize {
        self.kgroups
    }

    #[inline(always)]
    unsafe fn sums<V: Dot4, const MR: usize, const R: usize, const NU: usize, const NV: usize>(
        &self,
        row0: usize,
        b: *const i8,
        start: [V; NU],
    ) -> [[V; NU]; R] {
        let a_panel_bytes = self.kgroups * MR * V::A_BYTES;
        let a_panel = &self.a[row0 / MR * a_panel_bytes..][..a_panel_bytes];
        // SAFETY: forwarded from this function's contract; the A panel holds `kgroups`
        // groups of this layout (sliced just above): row 0's group g at `g · MR · A_BYTES`.
        unsafe {
            if R == 1 && NU <= NV {
                // A panel's single real row: K split over independent sums.
                let mut c = [start; R];
                let (a, stride) = (a_panel.as_ptr(), MR * V::A_BYTES);
                c[0] = if NIB {
                    sums_row_nibbles::<V, NU, NV>(a, stride, b, self.kgroups, start)
                } else {
                    sums_row::<V, NU, NV>(a, stride, b, self.kgroups, start)
                };
                return c;
            }
            sums::<V, MR, R, NU, NV, NIB>(a_panel.as_ptr(), b, self.kgroups, start)
        }
    }
}

/// One row of A packed densely: group g at `g · A_BYTES`, `kgroups × A_BYTES` bytes (a
/// panel of one row; the GEMV's A, see `Kernel::with_row`). Its only row is row 0.
pub(super) struct RowA<'a, const NIB: bool> {
    pub a: &'a [u8],
    pub kgroups: usize,
}

impl<const NIB: bool> TileA for RowA<'_, NIB> {
    const B_NIBBLES: bool = NIB;

    #[inline(always)]
    fn kgroups(&self) -> usize {
        self.kgroups
    }

    #[inline(always)]
    unsafe fn sums<V: Dot4, const MR: usize, const R: usize, const NU: usize, const NV: usize>(
        &self,
        row0: usize,
        b: *const i8,
        start: [V; NU],
    ) -> [[V; NU]; R] {
        let mut c = [start; R];
        if R != 1 || row0 != 0 || NU > NV {
            return c; // never: the block has one row
        }
        let row = &self.a[..self.kgroups * V::A_BYTES];
        // SAFETY: forwarded from this function's contract; the row holds `kgroups`
        // groups of 4 bytes (sliced just above), and the B panel `kgroups` groups (for
        // 4-bit B, `kgroups / 2` rooms) of `NV · LANES · 4` bytes.
        c[0] = unsafe {
            if NIB {
                sums_row_nibbles::<V, NU, NV>(row.as_ptr(), V::A_BYTES, b, self.kgroups, start)
            } else {
                sums_row::<V, NU, NV>(row.as_ptr(), V::A_BYTES, b, self.kgroups, start)
            }
        };
        c
    }
}

/// A read in place: row `r`'s K is `segments` runs of `seg_groups · 4` bytes, each at
/// its offset (see [`IndirectA`]), whose bounds `Kernel::indirect_block` checked.
pub(super) struct Indirect<'a> {
    input: *const u8,
    input_len: usize,
    pad: *const u8,
    offsets: &'a [usize],
    segments: usize,
    seg_groups: usize,
}

impl TileA for Indirect<'_> {
    #[inline(always)]
    fn kgroups(&self) -> usize {
        self.segments * self.seg_groups
    }

    #[inline(always)]
    unsafe fn sums<V: Dot4, const MR: usize, const R: usize, const NU: usize, const NV: usize>(
        &self,
        row0: usize,
        b: *const i8,
        start: [V; NU],
    ) -> [[V; NU]; R] {
        const { assert!(V::A_BYTES == 4, "A read in place is u8") };
        let mut c = [start; R];
        if R > MR || NU > NV {
            return c;
        }
        let (segments, seg_groups) = (self.segments, self.seg_groups);
        let offsets = &self.offsets[row0 * segments..][..R * segments];
        // Every offset of these rows addresses `seg_groups · 4` readable bytes of the
        // input or of the pad buffer (`IndirectA`, checked by `Kernel::indirect_block`).
        // SAFETY: the CPU has V's features (the contract); the runs are in bounds (above),
        // and segment s covers groups `s · seg_groups..` of the B panel, within `kgroups`.
        unsafe {
            for s in 0..segments {
                let at: [*const u8; R] = std::array::from_fn(|r| {
                    let off = offsets[r * segments + s];
                    if off < self.input_len { self.input.add(off) } else { self.pad.add(off - self.input_len) }
                });
                let bs = b.add(s * seg_groups * NV * V::LANES * 4);
                const U: usize = 4;
                for chunk in 0..seg_groups / U {
                    for u in 0..U {
                        step_rows::<V, R, NU, NV>(&mut c, &at, bs, U * chunk + u);
                    }
                }
                for g in seg_groups / U * U..seg_groups {
                    step_rows::<V, R, NU, NV>(&mut c, &at, bs, g);
                }
            }
        }
        c
    }
}

/// One k-group of a tile whose rows are at `at[r]`: `c[r][v] += A[r, g] · B[g][v]`.
///
/// # Safety
/// The CPU has `V`'s features; each `at[r]` holds group `g` (4 bytes at `4g`), and `b`
/// holds group `g` of a panel of `NV · LANES` columns.
#[inline(always)]
unsafe fn step_rows<V: Dot4, const R: usize, const NU: usize, const NV: usize>(
    c: &mut [[V; NU]; R],
    at: &[*const u8; R],
    b: *const i8,
    g: usize,
) {
    // SAFETY: group g lies within every row's run and the B panel (the contract).
    unsafe {
        let bg = b.add(g * NV * V::LANES * 4);
        let mut bv = [V::zero(); NU];
        for (v, bv) in bv.iter_mut().enumerate() {
            *bv = V::load_b(bg.add(v * V::LANES * 4));
        }
        for (cr, &p) in c.iter_mut().zip(at) {
            let a4 = V::splat_a(p.add(g * 4));
            for (cv, &bv) in cr.iter_mut().zip(&bv) {
                *cv = cv.dot(a4, bv);
            }
        }
    }
}

/// Every tile of a block: B panels outer (one stays in L1), A panels inner, each tile
/// with its `MR × NV·LANES` sums in registers until `sink` takes them.
///
/// # Safety
/// The CPU has `V`'s features, and the caller is compiled with them (this function is
/// inlined into it); the operands hold what [`BlockArgs`] (or [`IndirectArgs`]) says
/// for a kernel with tile `MR × NV·LANES`, K-group 4 and u8 A.
#[inline(always)]
pub(super) unsafe fn block_into<V: Dot4, const MR: usize, const NV: usize, A: TileA, S: Sink<V, NV>>(
    panels: Panels<'_, A>,
    sink: &mut S,
) {
    // `rows_of` has an arm for each row count up to 8: a taller tile would skip rows.
    const { assert!(MR >= 1 && MR <= 8, "Dot4 tiles have at most 8 rows") };
    let Panels { a, b, b_panel_stride, row_panels, rows, col_panels, cols } = panels;
    let nr = NV * V::LANES;
    let kgroups = a.kgroups();
    for jp in 0..col_panels {
        // The vectors of this panel that hold real columns: the last panel of a block
        // whose N is not a multiple of NR computes only those (N = 256 on an 8 × 48
        // tile: 16 columns, one vector of three, in its sixth panel).
        let used = cols.saturating_sub(jp * nr).min(nr).div_ceil(V::LANES);
        if used == 0 {
            continue; // padding only: never read
        }
        let b_panel = &b[jp * b_panel_stride..][..kgroups * nr * if A::B_NIBBLES { 2 } else { 4 }];
        // SAFETY: the CPU has V's features (this function's contract).
        unsafe { sink.panel(jp) };
        for ip in 0..row_panels {
            let real_rows = rows.saturating_sub(ip * MR).min(MR);
            let (bp, row0) = (b_panel.as_ptr(), ip * MR);
            // SAFETY: the CPU has V's features (this function's contract); the B panel
            // holds `kgroups` groups of this layout (sliced just above), and rows
            // `row0..row0 + real_rows` are real rows of the block.
            unsafe {
                match used {
                    1 => rows_of::<V, MR, 1, NV, A, S>(sink, &a, real_rows, row0, bp),
                    2 if NV >= 2 => rows_of::<V, MR, 2, NV, A, S>(sink, &a, real_rows, row0, bp),
                    3 if NV >= 3 => rows_of::<V, MR, 3, NV, A, S>(sink, &a, real_rows, row0, bp),
                    _ => rows_of::<V, MR, NV, NV, A, S>(sink, &a, real_rows, row0, bp),
                }
            }
        }
    }
}

/// One tile of `real_rows ≤ MR` rows and the first `NU` vectors of a panel, into `sink`.
///
/// # Safety
/// As [`block_into`], for the rows at `row0` and the B panel at `b`.
#[inline(always)]
unsafe fn rows_of<V: Dot4, const MR: usize, const NU: usize, const NV: usize, A: TileA, S: Sink<V, NV>>(
    sink: &mut S,
    a: &A,
    real_rows: usize,
    row0: usize,
    b: *const i8,
) {
    // SAFETY: forwarded from this function's contract.
    unsafe {
        match real_rows {
            8 => sink.tile(row0, &a.sums::<V, MR, 8, NU, NV>(row0, b, sink.start())),
            7 => sink.tile(row0, &a.sums::<V, MR, 7, NU, NV>(row0, b, sink.start())),
            6 => sink.tile(row0, &a.sums::<V, MR, 6, NU, NV>(row0, b, sink.start())),
            5 => sink.tile(row0, &a.sums::<V, MR, 5, NU, NV>(row0, b, sink.start())),
            4 => sink.tile(row0, &a.sums::<V, MR, 4, NU, NV>(row0, b, sink.start())),
            3 => sink.tile(row0, &a.sums::<V, MR, 3, NU, NV>(row0, b, sink.start())),
            2 => sink.tile(row0, &a.sums::<V, MR, 2, NU, NV>(row0, b, sink.start())),
            1 => sink.tile(row0, &a.sums::<V, MR, 1, NU, NV>(row0, b, sink.start())),
            _ => {} // a panel with no real rows: nothing to compute
        }
    }
}

/// One k-group: `c[r][v] += A[r, g] · B[g][v]` for every row r < R and vector v < NU.
///
/// # Safety
/// As [`sums`], with `g < kgroups`.
#[inline(always)]
unsafe fn step<V: Dot4, const MR: usize, const R: usize, const NU: usize, const NV: usize, const NIB: bool>(
    c: &mut [[V; NU]; R],
    a: *const u8,
    b: *const i8,
    g: usize,
) {
    // SAFETY: group g lies within both panels (the contract); for 4-bit B (`NIB`), in
    // the room of pair g / 2, its low nibbles for even g and its high ones for odd g.
    unsafe {
        let room = NV * V::LANES * 4;
        let bg = if NIB { b.add(g / 2 * room) } else { b.add(g * room) };
        let mut bv = [V::zero(); NU];
        for (v, bv) in bv.iter_mut().enumerate() {
            let p = bg.add(v * V::LANES * 4);
            *bv = if NIB { V::load_b_nibble(p, g % 2 == 1) } else { V::load_b(p) };
        }
        let ag = a.add(g * MR * V::A_BYTES);
        for (r, cr) in c.iter_mut().enumerate() {
            let a4 = V::splat_a(ag.add(r * V::A_BYTES));
            for (cv, &bv) in cr.iter_mut().zip(&bv) {
                *cv = cv.dot(a4, bv);
            }
        }
    }
}

/// `Σ_g A[r, g] · B[g]` for the first `R` rows of a panel of `MR` and the first `NU`
/// vectors of a panel of `NV`, wrapping in i32. `R > MR` and `NU > NV` never happen
/// (the callers' bounds); such instances return `start`.
///
/// # Safety
/// The CPU has `V`'s features; `a` holds `kgroups` groups of `MR` rows × `A_BYTES`, and
/// `b` holds `kgroups` groups of `NV · LANES · 4` bytes.
#[inline(always)]
unsafe fn sums<V: Dot4, const MR: usize, const R: usize, const NU: usize, const NV: usize, const NIB: bool>(
    a: *const u8,
    b: *const i8,
    kgroups: usize,
    start: [V; NU],
) -> [[V; NU]; R] {
    // SAFETY: the CPU has V's features (the contract); every pointer below stays
    // within group g < kgroups of the panels.
    unsafe {
        let mut c = [start; R];
        if R > MR || NU > NV {
            return c;
        }
        // `V::UNROLL` k-groups per iteration (see there).
        let u = V::UNROLL;
        for chunk in 0..kgroups / u {
            for i in 0..u {
                step::<V, MR, R, NU, NV, NIB>(&mut c, a, b, u * chunk + i);
            }
        }
        for g in kgroups / u * u..kgroups {
            step::<V, MR, R, NU, NV, NIB>(&mut c, a, b, g);
        }
        c
    }
}

/// [`sums_row`] against 4-bit B: pair `p` of k-groups is one group's room of the
/// panel (`NV · LANES · 4` bytes), group `2p` in its low nibbles and `2p + 1` in its
/// high ones, unpacked in registers ([`Dot4::load_b_nibbles`]) and multiplied by A's
/// groups `2p` and `2p + 1`. `ROW_SPLIT / 2` chains of pairs run side by side.
///
/// # Safety
/// As [`sums_row`], with `b` holding `kgroups / 2` rooms and `kgroups` even.
#[inline(always)]
unsafe fn sums_row_nibbles<V: Dot4, const NU: usize, const NV: usize>(
    a: *const u8,
    a_stride: usize,
    b: *const i8,
    kgroups: usize,
    start: [V; NU],
) -> [V; NU] {
    const CHAINS: usize = ROW_SPLIT / 2;
    let room = NV * V::LANES * 4;
    let pairs = kgroups / 2;
    // SAFETY: the CPU has V's features (the contract); every load below is of pair
    // p < kgroups / 2 of B and groups 2p, 2p + 1 < kgroups of A.
    unsafe {
        let mut c = [[V::zero(); NU]; CHAINS];
        c[0] = start;
        for chunk in 0..pairs / CHAINS {
            for (s, cs) in c.iter_mut().enumerate() {
                let p = chunk * CHAINS + s;
                nibble_pair::<V, NU>(cs, a.add(2 * p * a_stride), a_stride, b.add(p * room));
            }
        }
        for p in pairs / CHAINS * CHAINS..pairs {
            nibble_pair::<V, NU>(&mut c[0], a.add(2 * p * a_stride), a_stride, b.add(p * room));
        }
        let mut sum = c[0];
        for cs in &c[1..] {
            for (s, &v) in sum.iter_mut().zip(cs) {
                *s = s.add(v);
            }
        }
        sum
    }
}

/// `c += A[2p] · low nibbles + A[2p + 1] · high nibbles` of the room at `b` (A's group
/// `2p` at `a`, `2p + 1` at `a + a_stride`), for the
/// first `NU` vectors (a function, not a closure: a closure is not always inlined into
/// the function whose target features its intrinsics need).
///
/// # Safety
/// As [`sums_row_nibbles`], for one pair and its room at `b`.
#[inline(always)]
unsafe fn nibble_pair<V: Dot4, const NU: usize>(c: &mut [V; NU], a: *const u8, a_stride: usize, b: *const i8) {
    // SAFETY: forwarded from this function's contract.
    unsafe {
        let (a0, a1) = (V::splat_a(a), V::splat_a(a.add(a_stride)));
        for (v, cv) in c.iter_mut().enumerate() {
            let (low, high) = V::load_b_nibbles(b.add(v * V::LANES * 4));
            *cv = cv.dot(a0, low).dot(a1, high);
        }
    }
}

/// Independent partial sums per vector in [`sums_row`]: group `g` of each chunk of
/// `ROW_SPLIT` goes to sum `g mod ROW_SPLIT`. With one row, a vector's accumulator
/// would otherwise take one dot product per group, each waiting for the last (the
/// instruction's latency); split, `ROW_SPLIT` chains run side by side.
const ROW_SPLIT: usize = 4;

/// `Σ_g A[g] · B[g]` for one row whose group g is at `a + g · a_stride` and the first
/// `NU` vectors of a B panel of `NV`, wrapping in i32: K split over `ROW_SPLIT`
/// partial sums, added at the end (i32 addition wraps, so it is associative and
/// commutative: the same sums in any order).
///
/// # Safety
/// The CPU has `V`'s features; `a` holds `kgroups` groups at `a_stride`, and `b`
/// holds `kgroups` groups of `NV · LANES · 4` bytes.
#[inline(always)]
unsafe fn sums_row<V: Dot4, const NU: usize, const NV: usize>(
    a: *const u8,
    a_stride: usize,
    b: *const i8,
    kgroups: usize,
    start: [V; NU],
) -> [V; NU] {
    let group_bytes = NV * V::LANES * 4;
    // SAFETY: the CPU has V's features (the contract); every load below is of group
    // g < kgroups of both operands.
    unsafe {
        let mut c = [[V::zero(); NU]; ROW_SPLIT];
        c[0] = start;
        let one = |c: &mut [V; NU], g: usize| {
            let bg = b.add(g * group_bytes);
            let a4 = V::splat_a(a.add(g * a_stride));
            for (v, cv) in c.iter_mut().enumerate() {
                *cv = cv.dot(a4, V::load_b(bg.add(v * V::LANES * 4)));
            }
        };
        for chunk in 0..kgroups / ROW_SPLIT {
            let g0 = chunk * ROW_SPLIT;
            for (s, cs) in c.iter_mut().enumerate() {
                one(cs, g0 + s);
            }
        }
        for g in kgroups / ROW_SPLIT * ROW_SPLIT..kgroups {
            one(&mut c[0], g);
        }
        let mut sum = c[0];
        for cs in &c[1..] {
            for (s, &v) in sum.iter_mut().zip(cs) {
                *s = s.add(v);
            }
        }
        sum
    }
}
