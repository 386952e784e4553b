//! Packing of B (once, at weight-load time) and of A (per block, per call) into the
//! panel layouts the microkernels stream through.
//!
//! Packed B: `ceil(N / nr)` panels of `nr` columns, each holding all of K, padded with
//! zeros to a multiple of the tile's K step (`kp` values; the step is `kg`, or A's
//! larger group `ka` where the tile has one). Within a panel, K runs in groups of `kg`;
//! each group stores the `kg` consecutive weights of column 0, then of column 1, ...:
//!
//! ```text
//!            panel 0 (columns 0..nr)                          panel 1 (columns nr..2nr)
//!  ┌──────────────────────────────────────────────────────┐ ┌──────────────────
//!  │ k-group 0: [c0: k0..kg) [c1: k0..kg) … [c(nr−1): …)  │ │ k-group 0: …
//!  │ k-group 1: [c0: kg..2kg) …                           │ │ …
//!  │ …                 (kp / kg groups)                   │ │
//!  └──────────────────────────────────────────────────────┘ └──────────────────
//!   panel stride = kp · nr bytes; columns past N and k past K are zero
//! ```
//!
//! A block of k-groups `[g0, g1)` of a panel is contiguous, which is what cache
//! blocking over K needs. Zero padding makes the padded products vanish, so the
//! microkernel never needs a tail case in K.
//!
//! Packed A (one `mc × kc` block): `ceil(mc / mr)` panels of `mr` rows, each with the
//! block's k-groups in order, each group holding `ka` values of row 0, then row 1, ...
//! (`ka` is the tile's A K-group: `kg` for every kernel but AMX's, whose A groups are
//! 64 values, a tile row):
//!
//! ```text
//!  panel 0: [g0: r0 k0..ka | r1 k0..ka | … | r(mr−1)] [g1: r0 …] …
//!  panel 1: …
//!   rows past M and k past K are zero
//! ```
//!
//! A kernel that multiplies in i16 (`vpmaddwd`) takes the same layout with each value
//! widened to a little-endian i16 ([`AFormat::I16`]): widening costs once per packed
//! value instead of once per use in the inner loop. One that multiplies signed by
//! signed (`smull`, `sdot`) takes each value with its top bit flipped
//! ([`AFormat::FlippedI8`], `a − 128` as an i8), and its row sums are of the flipped
//! values.

use std::collections::TryReserveError;

use crate::kernel::{AFormat, Tile};
use crate::rows::Rows;

/// How the source weight matrix B (K×N) is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BLayout {
    /// `B[k][n]` at `k * n_total + n`.
    KxN,
    /// `B[k][n]` at `n * k_total + k`.
    NxK,
}

/// B packed for one tile shape, with what the epilogue needs about its columns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackedB {
    tile: Tile,
    k: usize,
    n: usize,
    kp: usize,
    data: LineAligned,
    col_offsets: Vec<i32>,
    zero_points: Vec<i32>,
    pair_sums_fit_i16: bool,
    excludes_i8_min: bool,
    /// 4-bit weights ([`PackedB::try_new_nibbles`]): `data` holds two k-groups per
    /// group's room, one in each nibble.
    nibbles: bool,
}

impl PackedB {
    /// Packs a dense K×N matrix.
    ///
    /// `zero_points` holds one value (per tensor) or N values (per column).
    ///
    /// # Errors
    /// When the packed buffers cannot be allocated (an absurd N with K = 0, say).
    ///
    /// # Panics
    /// If `b.len() != k * n`, `zero_points` has neither 1 nor N values, or a size
    /// overflows (the public crate validates all of this first).
    pub fn try_new(
        tile: Tile,
        b: &[i8],
        layout: BLayout,
        k: usize,
        n: usize,
        zero_points: &[i8],
    ) -> Result<PackedB, TryReserveError> {
        let kp = k.div_ceil(tile.k_step()) * tile.k_step();
        PackedB::try_new_padded(tile, b, layout, k, n, zero_points, kp)
    }

    /// [`PackedB::try_new`] with K padded to `kp`.
    fn try_new_padded(
        tile: Tile,
        b: &[i8],
        layout: BLayout,
        k: usize,
        n: usize,
        zero_points: &[i8],
        kp: usize,
    ) -> Result<PackedB, TryReserveError> {
        assert_eq!(Some(b.len()), k.checked_mul(n), "B length");
        assert!(zero_points.len() == 1 || zero_points.len() == n, "zero point count");
        let panels = n.div_ceil(tile.nr);
        let panel_len = kp.checked_mul(tile.nr).expect("panel size overflows");
        let len = panels.checked_mul(panel_len).expect("packed size overflows");
        let mut data = LineAligned::zeroed(len)?;
        let at = |kk: usize, nn: usize| match layout {
            BLayout::KxN => b[kk * n + nn],
            BLayout::NxK => b[nn * k + kk],
        };
        for (panel, dst) in data.as_mut_slice().chunks_exact_mut(panel_len.max(1)).take(panels).enumerate() {
            let n0 = panel * tile.nr;
            let cols = tile.nr.min(n - n0);
            for kk in 0..k {
                let (group, lane) = (kk / tile.kg, kk % tile.kg);
                for c in 0..cols {
                    dst[(group * tile.nr + c) * tile.kg + lane] = at(kk, n0 + c);
                }
            }
        }
        let mut column_zero_points = zeroed(n)?;
        for (nn, zp) in column_zero_points.iter_mut().enumerate() {
            *zp = i32::from(zero_points[if zero_points.len() == 1 { 0 } else { nn }]);
        }
        // K·b_zp[n] − Σ_k B[k][n]: the part of the zero-point correction that depends on
        // the weights alone, done once here rather than on every call.
        let mut col_offsets = zeroed(n)?;
        for (nn, offset) in col_offsets.iter_mut().enumerate() {
            let sum = (0..k).fold(0i32, |s, kk| s.wrapping_add(i32::from(at(kk, nn))));
            *offset = (k as i32).wrapping_mul(column_zero_points[nn]).wrapping_sub(sum);
        }
        // Aligned pairs (k = 2j, 2j + 1) of every column, zero-padded past K. With
        // |w0| + |w1| ≤ 128, any u8 pair sum is at most 255 · 128 = 32640 < 2^15.
        let pair_sums_fit_i16 = tile.kg.is_multiple_of(2)
            && (0..n).all(|nn| {
                (0..k).step_by(2).all(|kk| {
                    let w1 = if kk + 1 < k { at(kk + 1, nn) } else { 0 };
                    i32::from(at(kk, nn)).abs() + i32::from(w1).abs() <= 128
                })
            });
        let excludes_i8_min = !b.contains(&i8::MIN);
        Ok(PackedB {
            tile,
            k,
            n,
            kp,
            data,
            col_offsets,
            zero_points: column_zero_points,
            pair_sums_fit_i16,
            excludes_i8_min,
            nibbles: false,
        })
    }

    /// Packs a K×N matrix of 4-bit values, each in `[0, 15]`, kept two per byte: the
    /// layout of [`PackedB::try_new`] with every two consecutive k-groups of a panel
    /// (`2j`, `2j + 1`) sharing the room of one, group `2j` in the low nibbles and
    /// `2j + 1` in the high ones. K is padded to a whole number of such pairs (and of
    /// the tile's K step): [`PackedB::nibble_k_step`]. Kernels read the groups back
    /// with [`PackedB::decode_nibbles`] (or, in registers, a mask and a shift).
    ///
    /// Signed int4 weights are packed as `w + 8` with zero point `zp + 8`, which
    /// leaves every difference `w − zp` as it was: the caller's choice (the public
    /// crate's), this function takes the values in `[0, 15]` only.
    ///
    /// # Errors
    /// As [`PackedB::try_new`].
    ///
    /// # Panics
    /// As [`PackedB::try_new`], and if a value is outside `[0, 15]`.
    pub fn try_new_nibbles(
        tile: Tile,
        b: &[i8],
        layout: BLayout,
        k: usize,
        n: usize,
        zero_points: &[i8],
    ) -> Result<PackedB, TryReserveError> {
        assert!(b.iter().all(|&w| (0..=15).contains(&w)), "4-bit weights in [0, 15]");
        let step = PackedB::nibble_k_step(tile);
        let kp = k.div_ceil(step) * step;
        let wide = PackedB::try_new_padded(tile, b, layout, k, n, zero_points, kp)?;
        let group = tile.nr * tile.kg;
        let (wide_stride, panels) = (wide.panel_stride(), n.div_ceil(tile.nr));
        let mut data = LineAligned::zeroed(wide.data.len / 2)?;
        let src = wide.data();
        for (panel, dst) in data.as_mut_slice().chunks_exact_mut((wide_stride / 2).max(1)).take(panels).enumerate() {
            let src = &src[panel * wide_stride..][..wide_stride];
            for (dst, src) in dst.chunks_exact_mut(group).zip(src.chunks_exact(2 * group)) {
                let (low, high) = src.split_at(group);
                for ((d, &lo), &hi) in dst.iter_mut().zip(low).zip(high) {
                    *d = (lo as u8 | (hi as u8) << 4) as i8;
                }
            }
        }
        Ok(PackedB { data, nibbles: true, ..wide })
    }

    /// What K is padded to for 4-bit weights of `tile`: a whole number of k-group
    /// pairs and of the tile's K step.
    pub const fn nibble_k_step(tile: Tile) -> usize {
        if tile.groups_per_a_group().is_multiple_of(2) { tile.k_step() } else { 2 * tile.k_step() }
    }

    /// Whether the weights are kept 4-bit ([`PackedB::try_new_nibbles`]).
    pub fn is_nibbles(&self) -> bool {
        self.nibbles
    }

    /// Writes the k-groups `[g0, g0 + groups)` of `col_panels` panels from panel
    /// `first_panel` of 4-bit weights into `dst` as i8 values, in the layout of
    /// [`PackedB::try_new`] for a block of that many groups: panel `p` at
    /// `p · groups · nr · kg`, so that any kernel reads the block as it reads 8-bit
    /// weights (with `b_panel_stride` that distance). Each panel's pairs of k-groups go
    /// through `pairs`, which computes what [`decode_pairs`] computes (it, or a kernel's
    /// own decoder: [`crate::Kernel::decode_nibbles`]).
    ///
    /// # Panics
    /// Unless the weights are 4-bit, `g0` is even (a block starts on a pair) and the
    /// block lies within the weights and `dst`.
    pub fn decode_nibbles(
        &self,
        first_panel: usize,
        col_panels: usize,
        g0: usize,
        groups: usize,
        dst: &mut [i8],
        mut pairs: impl FnMut(&[i8], &mut [i8], usize),
    ) {
        assert!(self.nibbles && g0.is_multiple_of(2), "a block of 4-bit weights from an even k-group");
        let group = self.tile.nr * self.tile.kg;
        let (stride, block) = (self.panel_stride(), groups * group);
        assert!((g0 + groups) * group <= 2 * stride, "k-groups past the weights");
        let src = &self.data()[first_panel * stride..];
        for (panel, out) in dst[..col_panels * block].chunks_exact_mut(block.max(1)).enumerate() {
            let src = &src[panel * stride + g0 / 2 * group..][..groups.div_ceil(2) * group];
            pairs(src, out, group);
        }
    }

    /// Packs N×K weights whose K is `runs` runs of `run_len` values for an indirect
    /// convolution that reads each run as `run_len` rounded up to the K-group (see
    /// [`crate::indirect`]): each run is padded with zero weights to a whole number of
    /// K-groups, so whatever the padding lanes of A hold adds nothing. [`PackedB::k`] is
    /// the padded depth; the zero-point correction ([`PackedB::col_offsets`]) is that
    /// of the real K.
    ///
    /// # Errors
    /// As [`PackedB::try_new`].
    ///
    /// # Panics
    /// As [`PackedB::try_new`], and if `b.len() != runs · run_len · n`.
    pub fn try_new_runs(
        tile: Tile,
        b: &[i8],
        runs: usize,
        run_len: usize,
        n: usize,
        zero_points: &[i8],
    ) -> Result<PackedB, TryReserveError> {
        let k = runs.checked_mul(run_len).expect("K overflows");
        assert_eq!(Some(b.len()), k.checked_mul(n), "B length");
        let padded_len = run_len.div_ceil(tile.kg) * tile.kg;
        let kp = runs.checked_mul(padded_len).expect("K overflows");
        let mut padded = zeroed::<i8>(kp.checked_mul(n).expect("B size overflows"))?;
        for (dst, src) in padded.chunks_exact_mut(padded_len.max(1)).zip(b.chunks_exact(run_len.max(1))) {
            dst[..run_len].copy_from_slice(src);
        }
        let mut packed = PackedB::try_new(tile, &padded, BLayout::NxK, kp, n, zero_points)?;
        // `kp·b_zp − Σ B` over the padded runs; the real K has `kp − k` fewer values.
        let extra = (kp - k) as i32;
        for (offset, &zp) in packed.col_offsets.iter_mut().zip(&packed.zero_points) {
            *offset = offset.wrapping_sub(extra.wrapping_mul(zp));
        }
        Ok(packed)
    }

    /// Whether every aligned pair of weights `(k = 2j, 2j + 1)` of every column has
    /// `|w0| + |w1| ≤ 128`, so that a u8 × i8 pair sum fits in i16 whatever the
    /// activations: the condition for a kernel's fast path on every block.
    pub fn pair_sums_fit_i16(&self) -> bool {
        self.pair_sums_fit_i16
    }

    /// Whether no weight is −128, as TFLite's int8 weight specification ([−127, 127])
    /// guarantees: then a flipped activation (`a − 128`) times a weight is at most
    /// 128·127 in magnitude and any two such products sum within i16.
    pub fn excludes_i8_min(&self) -> bool {
        self.excludes_i8_min
    }

    /// The tile it was packed for.
    pub fn tile(&self) -> Tile {
        self.tile
    }

    /// K, the depth.
    pub fn k(&self) -> usize {
        self.k
    }

    /// N, the number of columns.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Whether a kernel of `tile` reads these weights: the same panels and K-groups
    /// of B, and K padded to a whole number of the tile's K steps. (AMX's weights,
    /// `32x32c4` with K in 64s, fit AVX-512 VNNI's `8x32c4`, which runs the small
    /// products of the AMX tier.)
    pub fn fits(&self, tile: Tile) -> bool {
        self.tile.nr == tile.nr && self.tile.kg == tile.kg && self.kp.is_multiple_of(tile.k_step())
    }

    /// K rounded up to the tile's K step (its K-group, or A's larger one).
    pub fn k_padded(&self) -> usize {
        self.kp
    }

    /// Distance in bytes between panels (for 4-bit weights, half the values).
    pub fn panel_stride(&self) -> usize {
        if self.nibbles { self.kp * self.tile.nr / 2 } else { self.kp * self.tile.nr }
    }

    /// The packed panels (for 4-bit weights, their bytes: see
    /// [`PackedB::try_new_nibbles`]).
    pub fn data(&self) -> &[i8] {
        self.data.as_slice()
    }

    /// `K·b_zp[n] − Σ_k B[k][n]` per column, wrapping (K taken modulo 2^32): the
    /// correction that, times `a_zp`, compensates the activation zero point.
    pub fn col_offsets(&self) -> &[i32] {
        &self.col_offsets
    }

    /// The weight zero point of each column.
    pub fn zero_points(&self) -> &[i32] {
        &self.zero_points
    }

    /// Bytes held, packed panels and per-column data together.
    pub fn heap_size(&self) -> usize {
        self.data.buf.len() + 4 * (self.col_offsets.len() + self.zero_points.len())
    }

    /// The K×N matrix these weights were packed from, row-major (weights packed with
    /// [`PackedB::try_new`]; those of [`PackedB::try_new_runs`] come back with their
    /// runs padded).
    pub fn unpack(&self) -> Vec<i8> {
        if self.nibbles {
            return unpack_nibbles(self.tile, self.k, self.n, self.data()).expect("a packing of this crate's own");
        }
        unpack(self.tile, self.k, self.n, self.data()).expect("a packing of this crate's own")
    }
}

/// Spreads pairs of k-groups (`group` bytes each, the first in the low nibbles of
/// `src`, the second in the high ones) into consecutive groups of `out`; a last odd
/// group takes the low nibbles only.
pub fn decode_pairs(src: &[i8], out: &mut [i8], group: usize) {
    let (pairs, last) = out.split_at_mut(out.len() / (2 * group) * 2 * group);
    for (pair, src) in pairs.chunks_exact_mut(2 * group).zip(src.chunks_exact(group)) {
        let (low, high) = pair.split_at_mut(group);
        for ((lo, hi), &b) in low.iter_mut().zip(high.iter_mut()).zip(src) {
            *lo = b & 0x0f;
            *hi = ((b as u8) >> 4) as i8;
        }
    }
    if !last.is_empty() {
        for (lo, &b) in last.iter_mut().zip(&src[pairs.len() / 2..]) {
            *lo = b & 0x0f;
        }
    }
}

/// The K×N matrix (row-major) that `data`, panels packed for `tile` from K×N weights,
/// holds; `None` unless `data` is exactly such a packing: `ceil(N / nr)` panels of K
/// padded to the tile's K step, with zeros in every padded place. This is how packed
/// weights read from outside (a file) are checked and turned back into weights.
pub fn unpack(tile: Tile, k: usize, n: usize, data: &[i8]) -> Option<Vec<i8>> {
    if tile.nr == 0 || tile.kg == 0 || tile.k_step() == 0 {
        return None;
    }
    unpack_padded(tile, k, n, k.checked_next_multiple_of(tile.k_step())?, data)
}

/// [`unpack`] for 4-bit weights: `data` is panels packed for `tile` by
/// [`PackedB::try_new_nibbles`], two k-groups per group's room; the values come back
/// in `[0, 15]`.
pub fn unpack_nibbles(tile: Tile, k: usize, n: usize, data: &[i8]) -> Option<Vec<i8>> {
    if tile.nr == 0 || tile.kg == 0 || tile.k_step() == 0 {
        return None;
    }
    let kp = k.checked_next_multiple_of(PackedB::nibble_k_step(tile))?;
    let wide_panel = kp.checked_mul(tile.nr)?;
    let panels = n.div_ceil(tile.nr);
    if panels.checked_mul(wide_panel / 2)? != data.len() {
        return None;
    }
    let mut wide = Vec::new();
    wide.try_reserve_exact(panels * wide_panel).ok()?;
    wide.resize(panels * wide_panel, 0);
    for (src, out) in data.chunks_exact((wide_panel / 2).max(1)).zip(wide.chunks_exact_mut(wide_panel.max(1))) {
        decode_pairs(src, out, tile.nr * tile.kg);
    }
    unpack_padded(tile, k, n, kp, &wide)
}

/// [`unpack`] with K padded to `kp`.
fn unpack_padded(tile: Tile, k: usize, n: usize, kp: usize, data: &[i8]) -> Option<Vec<i8>> {
    let panel_len = kp.checked_mul(tile.nr)?;
    let panels = n.div_ceil(tile.nr);
    if panels.checked_mul(panel_len)? != data.len() {
        return None;
    }
    let mut b = Vec::new();
    b.try_reserve_exact(k.checked_mul(n)?).ok()?;
    b.resize(k * n, 0);
    for (panel, src) in data.chunks_exact(panel_len.max(1)).take(panels).enumerate() {
        let n0 = panel * tile.nr;
        let cols = tile.nr.min(n - n0);
        for group in 0..kp / tile.kg {
            for c in 0..tile.nr {
                for lane in 0..tile.kg {
                    let value = src[(group * tile.nr + c) * tile.kg + lane];
                    let kk = group * tile.kg + lane;
                    if kk < k && c < cols {
                        b[kk * n + n0 + c] = value;
                    } else if value != 0 {
                        return None;
                    }
                }
            }
        }
    }
    Some(b)
}

/// A vector of `len` zeros, or an error instead of an abort when memory runs out.
/// Zeroed bytes whose first lies at the start of a 64-byte cache line: the packed
/// panels, so that no 64-byte vector load of a panel straddles two lines (a heap `Vec`
/// of this size starts 16 bytes into one with glibc's allocator, and a kernel that
/// reads B from L1 or L2 then moves twice the lines). A clone is aligned afresh;
/// equality is of the bytes.
#[derive(Debug)]
struct LineAligned {
    buf: Vec<i8>,
    start: usize,
    len: usize,
}

impl LineAligned {
    const LINE: usize = crate::driver::LINE;

    fn zeroed(len: usize) -> Result<LineAligned, TryReserveError> {
        // An impossible size fails to reserve, as `len` itself would.
        let buf = zeroed::<i8>(len.saturating_add(Self::LINE - 1))?;
        let start = buf.as_ptr().addr().wrapping_neg() % Self::LINE;
        Ok(LineAligned { buf, start, len })
    }

    fn as_slice(&self) -> &[i8] {
        &self.buf[self.start..self.start + self.len]
    }

    fn as_mut_slice(&mut self) -> &mut [i8] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

impl Clone for LineAligned {
    fn clone(&self) -> LineAligned {
        // Allocation failure aborts, as for any clone of a `Vec`.
        let mut copy = LineAligned::zeroed(self.len).unwrap_or_else(|_| {
            std::alloc::handle_alloc_error(
                std::alloc::Layout::array::<i8>(self.len.saturating_add(Self::LINE - 1))
                    .expect("the size was allocated once"),
            )
        });
        copy.as_mut_slice().copy_from_slice(self.as_slice());
        copy
    }
}

impl PartialEq for LineAligned {
    fn eq(&self, other: &LineAligned) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for LineAligned {}

fn zeroed<T: Clone + Default>(len: usize) -> Result<Vec<T>, TryReserveError> {
    let mut v = Vec::new();
    v.try_reserve_exact(len)?;
    v.resize(len, T::default());
    Ok(v)
}

/// Packs rows `0..rows` and k-groups `[g0, g0 + groups)` of A (groups of the tile's
/// `ka` values) into `dst` (layout in the module documentation), and adds each row's
/// sum over the packed k range to `row_sums`, if given, in `format` (the row sums are
/// of the values as stored: for [`AFormat::FlippedI8`], `Σ (a − 128)` over the real k).
///
/// This is the portable packer of each format ([`packer`]); a kernel may carry a
/// faster one of the same layout (`Kernel::pack_a`).
///
/// `a` starts at the block's first row and has `k` values per row; values at or past
/// `k` are packed as zero. Rows that are not contiguous in memory (convolution taps)
/// are gathered into `gather`, which holds at least `groups · ka` values then.
///
/// # Panics
/// If `dst`, `row_sums` or `gather` is too short, A does not hold the rows, or no
/// packer has the tile's `ka` in `format`.
#[allow(clippy::too_many_arguments)]
pub fn pack_a(
    tile: Tile,
    a: &Rows<'_>,
    rows: usize,
    k: usize,
    g0: usize,
    groups: usize,
    format: AFormat,
    dst: &mut [u8],
    row_sums: Option<&mut [i32]>,
    gather: &mut [u8],
) {
    let args = PackA { mr: tile.mr, a, rows, k, g0, groups, dst, row_sums, gather };
    // SAFETY: the portable packers are safe functions (plain Rust, no target features).
    unsafe { packer(tile.ka, format)(args) }
}

/// What a packer of A is given: rows `0..rows` of `a` (`k` values each), k-groups
/// `[g0, g0 + groups)` of the packer's K-group, into panels of `mr` rows in `dst`, with
/// the rows' sums added to `row_sums` where given; see [`pack_a`].
#[derive(Debug)]
pub struct PackA<'a, 'r> {
    /// Rows per panel (the tile's `mr`, or 1 for a densely packed row).
    pub mr: usize,
    /// The rows.
    pub a: &'a Rows<'r>,
    /// Rows to pack.
    pub rows: usize,
    /// Values of K per row.
    pub k: usize,
    /// The first k-group to pack.
    pub g0: usize,
    /// K-groups to pack.
    pub groups: usize,
    /// The packed panels.
    pub dst: &'a mut [u8],
    /// Each row's sum, added to.
    pub row_sums: Option<&'a mut [i32]>,
    /// Room for one gathered row.
    pub gather: &'a mut [u8],
}

/// Packs A into a kernel's layout; see [`PackA`] and [`pack_a`].
///
/// # Safety
/// The CPU must support the instructions the function was compiled for; a kernel
/// carries one only where it does (`Kernel::with_a_packing`).
pub type PackAFn = unsafe fn(PackA<'_, '_>);

/// Decodes pairs of k-groups of 4-bit weights to i8, as [`decode_pairs`] does; see
/// [`PackedB::decode_nibbles`].
///
/// # Safety
/// As for [`PackAFn`].
pub type DecodePairsFn = unsafe fn(&[i8], &mut [i8], usize);

/// `Σ src`, wrapping in u32: a row's sum, for the zero-point correction.
///
/// # Safety
/// As for [`PackAFn`].
pub type RowSumFn = unsafe fn(&[u8]) -> u32;

/// The portable packer for A in K-groups of `ka` values in `format`.
///
/// # Panics
/// Where there is none (every K-group and format of a kernel in this crate has one).
pub const fn packer(ka: usize, format: AFormat) -> PackAFn {
    // Const K-groups and formats make each group's copy a single move.
    use AFormat::{FlippedI8 as F, I16, U8};
    match (ka, format) {
        (64, U8) => generic::<64, 1, false>,
        (16, U8) => generic::<16, 1, false>,
        (16, F) => generic::<16, 1, true>,
        (8, U8) => generic::<8, 1, false>,
        (8, F) => generic::<8, 1, true>,
        (4, U8) => generic::<4, 1, false>,
        (4, I16) => generic::<4, 2, false>,
        (4, F) => generic::<4, 1, true>,
        (2, U8) => generic::<2, 1, false>,
        (2, I16) => generic::<2, 2, false>,
        (1, U8) => generic::<1, 1, false>,
        (1, I16) => generic::<1, 2, false>,
        _ => panic!("no packer of A for this K-group and format"),
    }
}

/// The portable packer of one K-group and format.
fn generic<const KG: usize, const WIDTH: usize, const FLIP: bool>(args: PackA<'_, '_>) {
    pack_a_with::<KG, WIDTH, FLIP>(args, NO_FOUR, byte_sum)
}

/// Packs four whole k-groups of one row; see [`pack_a_with`].
pub(crate) type FourGroups = fn(&[u8], &mut [u8], usize, usize);

/// `Σ src`, wrapping in u32.
pub(crate) fn byte_sum(src: &[u8]) -> u32 {
    src.iter().fold(0u32, |s, &v| s.wrapping_add(u32::from(v)))
}

/// No four-group fast path.
pub(crate) const NO_FOUR: Option<FourGroups> = None;

/// [`pack_a`] for K-groups of `KG` values stored `WIDTH` bytes each (1: u8, 2: LE i16),
/// with the top bit of each value flipped if `FLIP` (only with `WIDTH` 1).
/// `four`, where given, packs four whole groups of a row at once:
/// `four(src, panel, at, stride)` with `src` the groups' `4·KG` values, `at` the byte
/// offset of the first group's slot in the panel and `stride` the bytes between slots.
/// `byte_sum` sums a row's values, wrapping in u32 ([`byte_sum`] or a vector version).
#[inline(always)]
pub(crate) fn pack_a_with<const KG: usize, const WIDTH: usize, const FLIP: bool>(
    args: PackA<'_, '_>,
    four: Option<impl Fn(&[u8], &mut [u8], usize, usize)>,
    byte_sum: impl Fn(&[u8]) -> u32,
) {
    let PackA { mr, a, rows, k, g0, groups, dst, mut row_sums, gather } = args;
    let panels = rows.div_ceil(mr);
    let panel_bytes = groups * mr * KG * WIDTH;
    let dst = &mut dst[..panels * panel_bytes];
    let k0 = g0 * KG;
    let k1 = ((g0 + groups) * KG).min(k).max(k0);
    let full_groups = (k1 - k0) / KG;
    for (panel, pdst) in dst.chunks_exact_mut(panel_bytes.max(1)).take(panels).enumerate() {
        for i in 0..mr {
            let r = panel * mr + i;
            let src: &[u8] = if r < rows { a.row(r, k0, k1, gather) } else { &[] };
            if let Some(row_sums) = row_sums.as_deref_mut().filter(|_| r < rows) {
                // Wrapping, as the reference's i32 sums do (a block of all of K may
                // exceed u32 when K is huge).
                let sum = byte_sum(src) as i32;
                // Flipped values are `a − 128`: their sum is 128 per value less.
                let flip = if FLIP { (src.len() as i32).wrapping_mul(128) } else { 0 };
                row_sums[r] = row_sums[r].wrapping_add(sum).wrapping_sub(flip);
            }
            let (mut whole, tail) = src.split_at(src.len().min(full_groups * KG));
            let mut g = 0;
            if let Some(four) = &four {
                let blocks = whole.chunks_exact(4 * KG);
                let rest = blocks.remainder();
                for block in blocks {
                    four(block, pdst, (g * mr + i) * KG * WIDTH, mr * KG * WIDTH);
                    g += 4;
                }
                whole = rest;
            }
            // Group g of this row goes to slot (g · mr + i); past the row's data, zeros.
            let mut put = |g: usize, group: [u8; KG]| {
                let at = (g * mr + i) * KG * WIDTH;
                let slot = &mut pdst[at..at + KG * WIDTH];
                if KG == 4 && WIDTH == 2 {
                    // Spread four bytes into four little-endian u16 with shifts: one
                    // 8-byte store instead of four 2-byte ones.
                    let x = u64::from(u32::from_le_bytes(group[..4].try_into().expect("4 bytes")));
                    let wide = (x & 0xff) | (x & 0xff00) << 8 | (x & 0xff_0000) << 16 | (x & 0xff00_0000) << 24;
                    slot.copy_from_slice(&wide.to_le_bytes());
                    return;
                }
                if WIDTH == 1 {
                    // One KG-byte store (padding flips too: it meets zero weights).
                    slot.copy_from_slice(&if FLIP { group.map(|v| v ^ 0x80) } else { group });
                    return;
                }
                for (bytes, v) in slot.chunks_exact_mut(WIDTH).zip(group) {
                    bytes.copy_from_slice(&u16::from(v).to_le_bytes()[..WIDTH]);
                }
            };
            for chunk in whole.chunks_exact(KG) {
                put(g, chunk.try_into().expect("KG values"));
                g += 1;
            }
            if !tail.is_empty() {
                let mut last = [0u8; KG];
                last[..tail.len()].copy_from_slice(tail);
                put(g, last);
                g += 1;
            }
            for g in g..groups {
                put(g, [0; KG]);
            }
        }
    }
}
