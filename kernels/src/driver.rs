//! The BLIS loop nest, shared by every kernel.
//!
//! ```text
//! for each block of mc rows of A                            (ic)
//!     for each block of kc values of K                      (pc)
//!         choose the fast path or the exact kernel for this block
//!         pack A[ic.., pc..] (mc × kc) as it wants, adding row sums
//!     for each block of nc columns of packed B              (jc)
//!         for each block of kc values of K but the last     (pc)
//!             kernel.block: acc (=, then +=) A_block · B[pc.., jc..]   (mr × nr tiles)
//!         for each strip of row panels (≤ 16 KiB of packed A)
//!             kernel.block, last K block, this strip's tiles
//!             kernel.epilogue: correct, bias, requantize, store its rows
//! ```
//!
//! A row block is packed once for all of K and reused for every block of columns, so
//! packing costs O(M·K) whatever N; its scratch is `mc × K` values.
//!
//! The fast path (see [`Kernel`]) runs on a block when the weights' pair sums fit in
//! i16 for any activation, or when the block's activations are all ≤ 127; both
//! conditions make its `vpmaddubsw` exact, so the choice never changes a result.
//!
//! B was packed once, whole, at weight-load time, so blocking over K and N only moves
//! the starting point within its panels. The accumulators of one `mc × nc` block live
//! in scratch across the K loop; the output stage runs on each strip of rows as soon
//! as its last K block is done, while it is in cache, and the output is written
//! exactly once.

use crate::kernel::{BlockArgs, Kernel};
use crate::output::{EpilogueArgs, OutData, OutputStage, ZeroPoints};
use crate::pack::{PackedB, pack_a};

/// How much packed A one strip of the last K block may hold (see [`gemm`]).
const STRIP_A_BYTES: usize = 16 << 10;

/// One GEMM call: `out[m × n] = stage(Σ (A − a_zp)(B − b_zp))`.
#[derive(Debug)]
pub struct GemmArgs<'a> {
    /// Rows of A and of the output.
    pub m: usize,
    /// A: row `r` is `a[r * a_stride..][..k]`.
    pub a: &'a [u8],
    /// Distance between rows of A.
    pub a_stride: usize,
    /// The activation zero point.
    pub a_zp: u8,
    /// The packed weights; they give K and N.
    pub b: &'a PackedB,
    /// The output stage, from column 0.
    pub stage: OutputStage<'a>,
    /// The output: row `r` is `out[r * out_stride..][..n]`.
    pub out: OutData<'a>,
    /// Distance between rows of the output.
    pub out_stride: usize,
}

/// Runs a GEMM with `kernel` on the calling thread.
///
/// # Panics
/// If the weights were packed for another tile, or a buffer is shorter than the
/// shapes say (the public crate validates all of this first).
pub fn gemm(kernel: &Kernel, args: GemmArgs<'_>) {
    let GemmArgs { m, a, a_stride, a_zp, b, stage, mut out, out_stride } = args;
    let tile = kernel.tile();
    let blocking = kernel.blocking();
    assert_eq!(b.tile(), tile, "weights packed for another tile");
    let (k, n) = (b.k(), b.n());
    if m == 0 || n == 0 {
        return;
    }
    assert!(k == 0 || (a_stride >= k && a.len() >= (m - 1) * a_stride + k), "A too short");

    let kgroups_total = b.k_padded() / tile.kg;
    // With a single row panel, A is tiny and B streams through once: take all of K at
    // once, so that each B panel is read front to back (what prefetchers follow)
    // rather than in kc-sized pieces a panel apart.
    let kc_groups = if m <= tile.mr { kgroups_total.max(1) } else { blocking.kc / tile.kg };
    let mc_max = blocking.mc.min(m.div_ceil(tile.mr) * tile.mr);
    let nc_max = blocking.nc.min(n.div_ceil(tile.nr) * tile.nr);
    let fast = kernel.fast_path();
    let wide = kernel.wide_a() || fast.is_some_and(|f| f.wide_a());
    let a_width = if wide { 2 } else { 1 };
    // A row block is packed once, for all of K, and reused for every block of columns.
    let mut a_pack = vec![0u8; mc_max * kgroups_total * tile.kg * a_width];
    let mut a_blocks: Vec<(usize, Kernel)> = Vec::with_capacity(kgroups_total.div_ceil(kc_groups.max(1)));
    let mut acc = vec![0i32; mc_max * nc_max];
    let mut row_sums = vec![0i32; mc_max];
    let zero_points = ZeroPoints { a_zp: i32::from(a_zp), col_offsets: b.col_offsets(), b_zp: b.zero_points() };

    for ic in (0..m).step_by(blocking.mc) {
        let rows = blocking.mc.min(m - ic);
        let row_panels = rows.div_ceil(tile.mr);
        let a_block = &a[ic * a_stride..];
        row_sums.fill(0);
        a_blocks.clear();
        let mut offset = 0;
        for g0 in (0..kgroups_total).step_by(kc_groups) {
            let groups = kc_groups.min(kgroups_total - g0);
            let block_kernel = match fast {
                Some(f)
                    if b.pair_sums_fit_i16()
                        || max_activation(a_block, a_stride, rows, k, g0 * tile.kg, groups * tile.kg) <= 127 =>
                {
                    f
                }
                _ => *kernel,
            };
            let dst = &mut a_pack[offset..];
            pack_a(tile, a_block, a_stride, rows, k, g0, groups, block_kernel.wide_a(), dst, &mut row_sums);
            a_blocks.push((offset, block_kernel));
            offset += row_panels * tile.mr * groups * tile.kg * if block_kernel.wide_a() { 2 } else { 1 };
        }
        for jc in (0..n).step_by(blocking.nc) {
            let cols = blocking.nc.min(n - jc);
            let col_panels = cols.div_ceil(tile.nr);
            let b_block = |g0: usize| &b.data()[(jc / tile.nr) * b.panel_stride() + g0 * tile.nr * tile.kg..];
            let epilogue = |acc: &[i32], r0: usize, strip_rows: usize, out: &mut OutData<'_>| {
                kernel.epilogue(EpilogueArgs {
                    acc: &acc[r0 * nc_max..],
                    acc_stride: nc_max,
                    rows: strip_rows,
                    cols,
                    row_sums: &row_sums[r0..],
                    zero_points: ZeroPoints {
                        col_offsets: &zero_points.col_offsets[jc..],
                        b_zp: &zero_points.b_zp[jc..],
                        ..zero_points
                    },
                    stage: stage.from_column(jc),
                    out: out.tail((ic + r0) * out_stride + jc),
                    out_stride,
                })
            };
            let Some((&(last_offset, last_kernel), earlier)) = a_blocks.split_last() else {
                // K = 0: no block writes the accumulators.
                acc.fill(0);
                epilogue(&acc, 0, rows, &mut out);
                continue;
            };
            // Every K block but the last, over the whole block: each B panel slice stays
            // in L1 while the row panels stream by.
            let mut g0 = 0;
            for (i, &(offset, block_kernel)) in earlier.iter().enumerate() {
                block_kernel.block(BlockArgs {
                    a: &a_pack[offset..],
                    b: b_block(g0),
                    b_panel_stride: b.panel_stride(),
                    row_panels,
                    rows,
                    col_panels,
                    kgroups: kc_groups,
                    acc: &mut acc,
                    acc_stride: nc_max,
                    accumulate: i > 0,
                });
                g0 += kc_groups;
            }
            // The last K block a strip of row panels at a time, each strip followed at
            // once by the output stage of its rows while their accumulators are still
            // in cache: the output stage is fused per strip, never a pass over a large
            // block. A strip's packed A fits in 16 KiB, so each B panel slice is read
            // once per strip from L1.
            let groups = kgroups_total - g0;
            let a_panel_bytes = groups * tile.mr * tile.kg * if last_kernel.wide_a() { 2 } else { 1 };
            let strip_panels = (STRIP_A_BYTES / a_panel_bytes.max(1)).clamp(1, row_panels);
            for ip in (0..row_panels).step_by(strip_panels) {
                let panels = strip_panels.min(row_panels - ip);
                let r0 = ip * tile.mr;
                let strip_rows = (panels * tile.mr).min(rows - r0);
                last_kernel.block(BlockArgs {
                    a: &a_pack[last_offset + ip * a_panel_bytes..],
                    b: b_block(g0),
                    b_panel_stride: b.panel_stride(),
                    row_panels: panels,
                    rows: strip_rows,
                    col_panels,
                    kgroups: groups,
                    acc: &mut acc[r0 * nc_max..],
                    acc_stride: nc_max,
                    accumulate: !earlier.is_empty(),
                });
                epilogue(&acc, r0, strip_rows, &mut out);
            }
        }
    }
}

/// The largest activation in rows `0..rows`, columns `[k0, k0 + len) ∩ [0, k)` of a
/// block (0 when that range is empty).
fn max_activation(a: &[u8], stride: usize, rows: usize, k: usize, k0: usize, len: usize) -> u8 {
    let k1 = (k0 + len).min(k);
    if k1 <= k0 {
        return 0;
    }
    (0..rows).map(|r| a[r * stride + k0..r * stride + k1].iter().fold(0, |m, &v| m.max(v))).max().unwrap_or(0)
}
