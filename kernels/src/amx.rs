//! AMX (Intel Advanced Matrix Extensions, INT8): the loop nest of the `amx-int8` tier,
//! written once over a small trait of tile operations ([`TileOps`]) with two
//! instances: the `asm!` one (`x86_64::amx_int8`, which needs the hardware) and
//! [`TileModel`], an exact scalar model of the tile registers and `tdpbusd` that runs
//! everywhere, miri included. Packing, tiling, edges, the loop nest and the output
//! stage are therefore tested on every machine through [`model_kernel`]; only the few
//! `asm!` wrappers need an AMX CPU.
//!
//! ## The tiles
//!
//! Eight tile registers of up to 16 rows × 64 bytes. `tdpbusd c, a, b` adds to each
//! i32 `c[m][n]` (16 × 16) the sum over `k < 16` and `i < 4` of `a[m][4k + i]` (u8) ×
//! `b[k][4n + i]` (i8), wrapping: one instruction is a 16 × 16 × 64 product. This
//! kernel holds a 32 × 32 block of C in four tiles and, per 64 values of K, loads two
//! tiles of A and two of B:
//!
//! ```text
//!              B0 (tmm6)      B1 (tmm7)        columns 0..16 and 16..32:
//!              16 k-groups × 16 columns × 4 k   rows of 128 bytes in the panel,
//!                                               each tile 64 of them
//!  A0 (tmm4) │ C00 (tmm0) │ C01 (tmm1) │        rows 0..16
//!  A1 (tmm5) │ C10 (tmm2) │ C11 (tmm3) │        rows 16..32
//!   16 rows × 64 k each: one A group of the panel, 64 bytes per row
//! ```
//!
//! ## The layouts (tile `32x32c4`, A groups of 64)
//!
//! - **B** is the usual packed B ([`crate::pack`]) with `nr = 32` and K-groups of 4:
//!   one k-group of a panel is 32 columns × 4 bytes = 128 bytes, and 16 k-groups are
//!   a B tile pair: columns 0..16 at offset 0 and 16..32 at offset 64, both with a
//!   row stride of 128. K is padded to a multiple of 64 (the tile's K step).
//! - **A** is packed in groups of 64 values per row ([`crate::kernel::Tile::ka`]):
//!   one group of a panel is 32 rows × 64 bytes, and its halves are A0 and A1, each
//!   1 KiB with a row stride of 64.
//! - **C**: the accumulators, loaded (K blocks after the first) and stored with the
//!   stride of the accumulator block; with a fused output stage, stored to a 4 KiB
//!   tile buffer and passed through the tier's epilogue while it is in L1.
//!
//! A panel with 16 real rows or fewer skips A1 and its two products, and a panel with
//! 16 real columns or fewer skips B1: the padding they would compute is never read.
//!
//! ## Tile state
//!
//! Each block call configures the tiles ([`TileOps::configure`], `ldtilecfg`) and
//! releases them at the end ([`TileOps::release`], `tilerelease`, also on unwinding),
//! so no tile state outlives a call on any thread.

use crate::kernel::{BlockArgs, Blocking, EpilogueFn, Kernel, Tile};
use crate::output::{EpilogueArgs, ZeroPoints};
use crate::pack::DecodePairsFn;

/// Rows of C per kernel call (two tiles of 16).
pub const MR: usize = 32;
/// Columns of C per kernel call (two tiles of 16).
pub const NR: usize = 32;
/// B's K-group: 4 consecutive k per column, the VNNI layout that `tdpbusd` reads.
pub const KG: usize = 4;
/// A's K-group: 64 consecutive k per row, one tile row.
pub const KA: usize = 64;
/// The tile: 32 × 32, B in groups of 4, A in groups of 64.
pub const TILE: Tile = Tile::new(MR, NR, KG).with_a_group(KA);
/// Cache blocking, measured on a Sapphire Rapids-class Xeon (`lscpu`: Intel Xeon,
/// family 6, 2 MiB of L2 per core), with the whole row block as the last K block's
/// strip ([`STRIP_BYTES`]): a B panel slice (640 × 32, 20 KiB) stays in L1 while the
/// block's 8 row panels (packed A up to 160 KiB per K block, in L2) pass it; the 256 ×
/// 256 accumulators (256 KiB) stay in L2. Against `mc 128, kc 4096, nc 512` with
/// 16 KiB strips (one row panel per strip), medians of three interleaved runs at 1
/// thread: 2048³ +33%, 128 × 3072 × 768 +20%, 128 × 768 × 3072 +17%, r50_3x3 +17%,
/// r50_late3x3 +12%, 1024³ +7%, the rest within noise. Among kc ∈ {512, 640, 768,
/// 1024, 4096}, 640 keeps K = 576 (a 3 × 3 conv of 64 channels) in one block, where
/// 512 splits it and lost 7% there.
pub const BLOCKING: Blocking = Blocking { mc: 256, kc: 640, nc: 256 };
/// 4-bit weights are decoded a step at a time inside the tile loop for products of
/// up to this many rows (one row panel: each step is decoded once, beside the tiles
/// that use it), and a block at a time into scratch above it (where each decoded block
/// serves several row panels).
pub const NIBBLE_BLOCK_ROWS: usize = MR;
/// The last K block runs a whole row block at a time (see [`BLOCKING`]).
pub const STRIP_BYTES: usize = usize::MAX;
// Within the scratch bound (`crate::driver::GEMM_SCRATCH_BYTES`): one block of packed
// A ≤ A_PACK_BYTES, accumulators ≤ 256 KiB.
const _: () =
    assert!(BLOCKING.mc * BLOCKING.kc <= crate::driver::A_PACK_BYTES && BLOCKING.mc * BLOCKING.nc <= 64 << 10);

/// Tile rows (and B tiles' k-groups) per tile.
const ROWS: usize = 16;
/// Bytes per tile row.
const ROW_BYTES: usize = 64;

/// The tile registers this kernel uses.
mod tmm {
    pub const C00: u8 = 0;
    pub const C01: u8 = 1;
    pub const C10: u8 = 2;
    pub const C11: u8 = 3;
    pub const A0: u8 = 4;
    pub const A1: u8 = 5;
    pub const B0: u8 = 6;
    pub const B1: u8 = 7;
}

/// The 64-byte operand of `ldtilecfg`: palette 1, and each tile's rows and bytes per
/// row (the tiles this kernel does not use stay 0, unconfigured).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(64))]
pub struct TileConfig {
    /// Byte 0: the palette (1: eight tiles of up to 16 rows × 64 bytes).
    pub palette: u8,
    /// Byte 1: the row a restarted instruction resumes at (0).
    pub start_row: u8,
    reserved: [u8; 14],
    /// Bytes 16..48: bytes per row of each tile.
    pub colsb: [u16; 16],
    /// Bytes 48..64: rows of each tile.
    pub rows: [u8; 16],
}

impl TileConfig {
    /// Tiles 0..8 as 16 rows × 64 bytes: what this kernel uses.
    pub const FULL: TileConfig = {
        let mut colsb = [0u16; 16];
        let mut rows = [0u8; 16];
        let mut t = 0;
        while t < 8 {
            colsb[t] = ROW_BYTES as u16;
            rows[t] = ROWS as u8;
            t += 1;
        }
        TileConfig { palette: 1, start_row: 0, reserved: [0; 14], colsb, rows }
    };
}

const _: () = assert!(size_of::<TileConfig>() == 64);

/// A value a tile is loaded from or stored to: the bytes of A and B, or the i32 sums.
pub trait Elem: Copy + Default + sealed::Sealed {
    /// Bytes per value.
    const BYTES: usize;
    /// The value's little-endian bytes into `out` (`BYTES` of them).
    fn put(self, out: &mut [u8]);
    /// The value from `BYTES` little-endian bytes.
    fn get(bytes: &[u8]) -> Self;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for u8 {}
    impl Sealed for i8 {}
    impl Sealed for i32 {}
}

impl Elem for u8 {
    const BYTES: usize = 1;
    fn put(self, out: &mut [u8]) {
        out[0] = self;
    }
    fn get(bytes: &[u8]) -> u8 {
        bytes[0]
    }
}

impl Elem for i8 {
    const BYTES: usize = 1;
    fn put(self, out: &mut [u8]) {
        out[0] = self as u8;
    }
    fn get(bytes: &[u8]) -> i8 {
        bytes[0] as i8
    }
}

impl Elem for i32 {
    const BYTES: usize = 4;
    fn put(self, out: &mut [u8]) {
        out[..4].copy_from_slice(&self.to_le_bytes());
    }
    fn get(bytes: &[u8]) -> i32 {
        i32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"))
    }
}

/// Whether a tile of `rows` rows and `colsb` bytes per row, `stride` values of `E`
/// apart, lies within `len` values: what a load or store through a slice must check
/// before the instruction touches memory.
pub fn tile_fits<E: Elem>(len: usize, rows: usize, colsb: usize, stride: usize) -> bool {
    rows == 0 || {
        let per_row = colsb.div_ceil(E::BYTES);
        stride.checked_mul(rows - 1).and_then(|s| s.checked_add(per_row)).is_some_and(|end| end <= len)
    }
}

/// The tile operations the loop nest needs, with the tile register as a const
/// parameter (each instruction encodes its registers). Loads and stores take slices
/// and a row stride in values, and panic where the configured tile would pass the
/// slice's end: both instances check the same bounds, so the model proves the loop
/// nest's accesses in bounds for the hardware too.
pub trait TileOps {
    /// Configures the tiles (`ldtilecfg`); every tile is zero afterwards.
    fn configure(&mut self, config: &TileConfig);
    /// Sets tile `T` to zero (`tilezero`).
    fn zero<const T: u8>(&mut self);
    /// Loads tile `T`'s configured rows, `stride` values apart, from `src` (`tileloadd`).
    fn load<const T: u8, E: Elem>(&mut self, src: &[E], stride: usize);
    /// `C += A · B`, u8 by i8 in groups of 4, wrapping (`tdpbusd`).
    fn dot<const C: u8, const A: u8, const B: u8>(&mut self);
    /// Stores tile `T`'s configured rows, `stride` values apart, to `dst` (`tilestored`).
    fn store<const T: u8, E: Elem>(&mut self, dst: &mut [E], stride: usize);
    /// Releases the tiles (`tilerelease`): no tile state remains.
    fn release(&mut self);
}

/// The scalar model of AMX's tiles: eight registers of 16 rows × 64 bytes and their
/// configuration, with `tdpbusd` computed exactly as the architecture defines it
/// (u8 × i8 products, four per i32 lane, added with wrap-around). It checks what the
/// hardware would fault on (an unconfigured tile, mismatched shapes).
#[derive(Clone, Debug)]
pub struct TileModel {
    config: Option<TileConfig>,
    regs: [[u8; ROWS * ROW_BYTES]; 8],
}

impl Default for TileModel {
    fn default() -> Self {
        TileModel { config: None, regs: [[0; ROWS * ROW_BYTES]; 8] }
    }
}

impl TileModel {
    /// A tile's configured (rows, bytes per row); panics if it is not configured.
    fn shape(&self, t: u8) -> (usize, usize) {
        let config = self.config.as_ref().expect("a tile instruction before ldtilecfg");
        let (rows, colsb) = (usize::from(config.rows[usize::from(t)]), usize::from(config.colsb[usize::from(t)]));
        assert!(rows > 0 && colsb > 0 && rows <= ROWS && colsb <= ROW_BYTES, "tile {t} not configured");
        (rows, colsb)
    }

    /// The i32 at row `m`, lane `n` of tile `t`.
    fn dword(&self, t: u8, m: usize, n: usize) -> i32 {
        i32::get(&self.regs[usize::from(t)][m * ROW_BYTES + 4 * n..])
    }
}

impl TileOps for TileModel {
    fn configure(&mut self, config: &TileConfig) {
        assert_eq!(config.palette, 1, "palette 1");
        self.config = Some(*config);
        self.regs = [[0; ROWS * ROW_BYTES]; 8];
    }

    fn zero<const T: u8>(&mut self) {
        self.shape(T);
        self.regs[usize::from(T)] = [0; ROWS * ROW_BYTES];
    }

    fn load<const T: u8, E: Elem>(&mut self, src: &[E], stride: usize) {
        let (rows, colsb) = self.shape(T);
        assert!(tile_fits::<E>(src.len(), rows, colsb, stride), "tile load past the slice");
        let reg = &mut self.regs[usize::from(T)];
        *reg = [0; ROWS * ROW_BYTES]; // rows and bytes past the configuration read as 0
        for r in 0..rows {
            let row = &src[r * stride..][..colsb / E::BYTES];
            for (i, &v) in row.iter().enumerate() {
                v.put(&mut reg[r * ROW_BYTES + i * E::BYTES..]);
            }
        }
    }

    fn dot<const C: u8, const A: u8, const B: u8>(&mut self) {
        let ((m, n4), (am, ak4), (bk, bn4)) = (self.shape(C), self.shape(A), self.shape(B));
        // The shapes `tdpbusd` requires (#UD otherwise).
        assert!(am == m && bn4 == n4 && ak4 == 4 * bk && n4.is_multiple_of(4) && ak4.is_multiple_of(4), "shapes");
        let (a, b) = (&self.regs[usize::from(A)], &self.regs[usize::from(B)]);
        let mut sums = [[0i32; ROWS]; ROWS];
        for (mi, row) in sums.iter_mut().enumerate().take(m) {
            for (ni, sum) in row.iter_mut().enumerate().take(n4 / 4) {
                *sum = self.dword(C, mi, ni);
            }
            // Group by group of A's row (wrapping adds commute, so the order is free); a
            // group of four zeros adds nothing and is skipped (padding: rows past M,
            // K past its end), which keeps the model quick under miri.
            for k in 0..bk {
                let group: [u8; 4] = a[mi * ROW_BYTES + 4 * k..][..4].try_into().expect("4 bytes");
                if group == [0; 4] {
                    continue;
                }
                let b_row = &b[k * ROW_BYTES..][..n4];
                for (sum, w) in row.iter_mut().zip(b_row.chunks_exact(4)) {
                    let products = (0..4).map(|i| i32::from(group[i]) * i32::from(w[i] as i8));
                    *sum = products.fold(*sum, i32::wrapping_add);
                }
            }
        }
        let c = &mut self.regs[usize::from(C)];
        for (mi, row) in sums.iter().enumerate().take(m) {
            for (ni, &s) in row.iter().enumerate().take(n4 / 4) {
                s.put(&mut c[mi * ROW_BYTES + 4 * ni..]);
            }
        }
    }

    fn store<const T: u8, E: Elem>(&mut self, dst: &mut [E], stride: usize) {
        let (rows, colsb) = self.shape(T);
        assert!(tile_fits::<E>(dst.len(), rows, colsb, stride), "tile store past the slice");
        let reg = &self.regs[usize::from(T)];
        for r in 0..rows {
            for (i, v) in dst[r * stride..][..colsb / E::BYTES].iter_mut().enumerate() {
                *v = E::get(&reg[r * ROW_BYTES + i * E::BYTES..]);
            }
        }
    }

    fn release(&mut self) {
        self.config = None;
        self.regs = [[0; ROWS * ROW_BYTES]; 8];
    }
}

/// Where a block's tiles go: into the accumulators, or through an output stage.
pub(crate) struct Stage<'s, 'a> {
    /// The stage of the block's rows and columns.
    pub args: &'s mut EpilogueArgs<'a>,
    /// The tier's epilogue, run on each tile's sums.
    pub epilogue: EpilogueFn,
}

/// The block's loop (see [`BlockArgs`]): B panels outer, row panels inner, each
/// 32 × 32 tile over the block's K in steps of 64. Without a stage, the sums go to
/// the accumulators (added to them where `accumulate`); with one, each tile's sums
/// (plus the accumulators where `accumulate`) go through the epilogue to the output
/// while they are in a 4 KiB buffer.
///
/// With `nibbles`, B is 4-bit weights as packed (see `Kernel::with_nibble_block`),
/// each K step decoded by that function (see [`crate::pack::decode_pairs`]) into a
/// 2 KiB buffer just before its tile loads.
///
/// # Safety
/// `stage.epilogue` must be sound to call on this CPU with arguments that satisfy
/// [`EpilogueArgs`] (the loop builds them from the stage's, in bounds), and so must
/// `nibbles` with slices.
///
/// # Panics
/// If a buffer is shorter than [`BlockArgs`] says (checked by the caller,
/// `Kernel::block`, and by every tile load and store again).
pub(crate) unsafe fn block<T: TileOps>(
    tiles: &mut T,
    args: BlockArgs<'_>,
    mut stage: Option<Stage<'_, '_>>,
    nibbles: Option<DecodePairsFn>,
) {
    let BlockArgs { a, b, b_panel_stride, row_panels, rows, col_panels, cols, kgroups, acc, acc_stride, accumulate } =
        args;
    assert!(kgroups.is_multiple_of(KA / KG), "a K block of whole A groups");
    // 4-bit B: each panel holds half the bytes, and each step's 16 k-groups are decoded
    // from 1 KiB of nibbles into `decoded` just before their tile loads.
    let b_panel_len = if nibbles.is_some() { kgroups * NR * KG / 2 } else { kgroups * NR * KG };
    let mut decoded = StepB([0; STEP_B]);
    let steps = kgroups / (KA / KG);
    let a_panel_bytes = steps * MR * KA;
    // Where a tile's sums go before the stage: 32 × 32, in L1, on a cache line (a tile
    // store of rows that split lines is much slower).
    let mut buffer = SumsBuffer([0i32; MR * NR]);
    let buffer = &mut buffer.0;
    tiles.configure(&TileConfig::FULL);
    for jp in 0..col_panels {
        let b_panel = &b[jp * b_panel_stride..][..b_panel_len];
        let real_cols = cols.saturating_sub(jp * NR).min(NR);
        let two_cols = real_cols > NR / 2;
        for ip in 0..row_panels {
            let real_rows = rows.saturating_sub(ip * MR).min(MR);
            if real_rows == 0 || real_cols == 0 {
                continue; // padding only: never read
            }
            let two_rows = real_rows > MR / 2;
            let a_panel = &a[ip * a_panel_bytes..][..a_panel_bytes];
            let at = ip * MR * acc_stride + jp * NR;
            // The tile's starting sums.
            if accumulate {
                let (c, row16) = (&acc[at..], 16 * acc_stride);
                tiles.load::<{ tmm::C00 }, i32>(c, acc_stride);
                if two_cols {
                    tiles.load::<{ tmm::C01 }, i32>(&c[16..], acc_stride);
                }
                if two_rows {
                    tiles.load::<{ tmm::C10 }, i32>(&c[row16..], acc_stride);
                    if two_cols {
                        tiles.load::<{ tmm::C11 }, i32>(&c[row16 + 16..], acc_stride);
                    }
                }
            } else {
                tiles.zero::<{ tmm::C00 }>();
                tiles.zero::<{ tmm::C01 }>();
                tiles.zero::<{ tmm::C10 }>();
                tiles.zero::<{ tmm::C11 }>();
            }
            // LOOP 0: K, 64 values at a time.
            for s in 0..steps {
                let a_group = &a_panel[s * MR * KA..][..MR * KA];
                let b_group = match nibbles {
                    None => &b_panel[s * STEP_B..][..STEP_B],
                    Some(decode) => {
                        // SAFETY: the caller's contract (the decoder runs on this CPU); it
                        // accesses memory only through the slices.
                        unsafe { decode(&b_panel[s * STEP_B / 2..][..STEP_B / 2], &mut decoded.0, NR * KG) };
                        &decoded.0[..]
                    }
                };
                tiles.load::<{ tmm::A0 }, u8>(a_group, KA);
                tiles.load::<{ tmm::B0 }, i8>(b_group, NR * KG);
                tiles.dot::<{ tmm::C00 }, { tmm::A0 }, { tmm::B0 }>();
                if two_cols {
                    tiles.load::<{ tmm::B1 }, i8>(&b_group[ROW_BYTES..], NR * KG);
                    tiles.dot::<{ tmm::C01 }, { tmm::A0 }, { tmm::B1 }>();
                }
                if two_rows {
                    tiles.load::<{ tmm::A1 }, u8>(&a_group[ROWS * KA..], KA);
                    tiles.dot::<{ tmm::C10 }, { tmm::A1 }, { tmm::B0 }>();
                    if two_cols {
                        tiles.dot::<{ tmm::C11 }, { tmm::A1 }, { tmm::B1 }>();
                    }
                }
            }
            // The sums: to the accumulators, or through the stage.
            let (dst, stride) = match stage {
                Some(_) => (&mut buffer[..], NR),
                None => (&mut acc[at..], acc_stride),
            };
            store_tiles(tiles, dst, stride, two_rows, two_cols);
            if let Some(stage) = stage.as_mut() {
                let (r0, c0) = (ip * MR, jp * NR);
                let (stored_rows, stored_cols) = (real_rows.min(stage.args.rows - r0), real_cols);
                let stored_cols = stored_cols.min(stage.args.cols.saturating_sub(c0));
                if stored_cols > 0 {
                    // SAFETY: the caller's contract; the arguments are windows of the
                    // stage's, which the caller checked, over the tile's rows and columns.
                    unsafe { run_stage(stage, buffer, r0, c0, stored_rows, stored_cols) };
                }
            }
        }
    }
    tiles.release();
}

/// Bytes of B per K step: 16 k-groups of 32 columns × 4 values.
const STEP_B: usize = (KA / KG) * NR * KG;

/// One K step of B decoded from 4-bit weights, on a cache line.
#[repr(C, align(64))]
struct StepB([i8; STEP_B]);

/// A tile's sums, on a cache line.
#[repr(C, align(64))]
struct SumsBuffer([i32; MR * NR]);

/// Stores the four C tiles (those computed) to `dst`, `stride` values apart.
fn store_tiles<T: TileOps>(tiles: &mut T, dst: &mut [i32], stride: usize, two_rows: bool, two_cols: bool) {
    let row16 = 16 * stride;
    tiles.store::<{ tmm::C00 }, i32>(dst, stride);
    if two_cols {
        tiles.store::<{ tmm::C01 }, i32>(&mut dst[16..], stride);
    }
    if two_rows {
        tiles.store::<{ tmm::C10 }, i32>(&mut dst[row16..], stride);
        if two_cols {
            tiles.store::<{ tmm::C11 }, i32>(&mut dst[row16 + 16..], stride);
        }
    }
}

/// Runs the stage on a tile's sums in `buffer` (32 × 32): rows `r0..r0 + rows` and
/// columns `c0..c0 + cols` of the stage's block.
///
/// # Safety
/// As [`block`].
unsafe fn run_stage(stage: &mut Stage<'_, '_>, buffer: &[i32], r0: usize, c0: usize, rows: usize, cols: usize) {
    let s = &mut *stage.args;
    let zero_points = ZeroPoints {
        a_zp: s.zero_points.a_zp,
        col_offsets: &s.zero_points.col_offsets[c0..],
        b_zp: &s.zero_points.b_zp[c0..],
    };
    let args = EpilogueArgs {
        acc: buffer,
        acc_stride: NR,
        rows,
        cols,
        row_sums: &s.row_sums[r0..],
        zero_points,
        stage: s.stage.from_column(c0),
        out: s.out.window(r0, c0, rows, cols),
    };
    args.check();
    // SAFETY: the caller's contract (the epilogue runs on this CPU), and the arguments
    // were just checked against `EpilogueArgs`.
    unsafe { (stage.epilogue)(args) }
}

/// The model kernel's block: the loop nest on [`TileModel`].
fn model_block(args: BlockArgs<'_>) {
    // SAFETY: no stage.
    unsafe { block(&mut TileModel::default(), args, None, None) }
}

/// The model kernel's block on 4-bit weights, decoded a step at a time by the
/// portable decoder.
fn model_nibble_block(args: BlockArgs<'_>) {
    // SAFETY: no stage; the portable decoder runs on any CPU.
    unsafe { block(&mut TileModel::default(), args, None, Some(crate::pack::decode_pairs)) }
}

/// As [`model_nibble_block`], each tile through the portable epilogue.
fn model_nibble_staged(args: BlockArgs<'_>, mut stage: EpilogueArgs<'_>) {
    let stage = Stage { args: &mut stage, epilogue: model_epilogue };
    // SAFETY: the portable epilogue and decoder run on any CPU.
    unsafe { block(&mut TileModel::default(), args, Some(stage), Some(crate::pack::decode_pairs)) }
}

/// The model kernel's fused block: the loop nest on [`TileModel`], each tile through
/// the portable epilogue.
fn model_staged(args: BlockArgs<'_>, mut stage: EpilogueArgs<'_>) {
    let stage = Stage { args: &mut stage, epilogue: model_epilogue };
    // SAFETY: the portable epilogue runs on any CPU.
    unsafe { block(&mut TileModel::default(), args, Some(stage), None) }
}

fn model_epilogue(args: EpilogueArgs<'_>) {
    crate::output::epilogue_scalar(args)
}

static MODEL: Kernel = {
    // SAFETY: plain Rust (the model of the tiles and the portable epilogue), which runs
    // on any CPU and touches memory only through the slices it is given.
    unsafe {
        Kernel::new("32x32c4-amx-model", TILE, BLOCKING, model_block, model_epilogue)
            .with_staged_block(model_staged)
            .with_strip_bytes(STRIP_BYTES)
            .with_nibble_block(model_nibble_block, Some(model_nibble_staged))
            .with_nibble_block_rows(NIBBLE_BLOCK_ROWS)
    }
};

/// The `amx-int8` kernel's loop nest, packing and output stage on the scalar model of
/// the tiles, with the portable epilogue: exact and slow, for tests on every machine
/// (it is not a tier, and no dispatch chooses it).
pub fn model_kernel() -> &'static Kernel {
    &MODEL
}
