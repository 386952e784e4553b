//! `4x32c2-portable`: plain Rust, blocked and packed like the SIMD kernels, compiled
//! for several targets with `multiversion` so that every CPU gets a reasonably fast
//! path (LLVM turns the pair products into `pmaddwd` on x86). It runs everywhere.

use multiversion::multiversion;

use crate::kernel::{BlockArgs, Blocking, Kernel, Tile};
use crate::output::{EpilogueArgs, epilogue_scalar};

const MR: usize = 4;
const NR: usize = 32;
const KG: usize = 2;

static KERNEL: Kernel = {
    // SAFETY: both entry points are plain Rust whose multiversioned clones are
    // dispatched on runtime-detected features, so they run on any CPU, and they only
    // touch memory through the slices they are given.
    unsafe {
        Kernel::new("4x32c2-portable", Tile::new(MR, NR, KG), Blocking { mc: 64, kc: 512, nc: 512 }, block, epilogue)
            .with_nibble_block(block_nibbles, None)
    }
};

/// The portable kernel; available on every CPU.
pub fn kernel() -> &'static Kernel {
    &KERNEL
}

fn epilogue(args: EpilogueArgs<'_>) {
    epilogue_scalar(args)
}

/// `acc += A · B` for every tile of the block.
fn block(args: BlockArgs<'_>) {
    let BlockArgs { a, b, b_panel_stride, row_panels, col_panels, kgroups, acc, acc_stride, accumulate, .. } = args;
    block_impl::<false>(a, b, b_panel_stride, row_panels, col_panels, kgroups, acc, acc_stride, accumulate);
}

/// [`block`] against 4-bit weights (`Kernel::with_nibble_block`): each group's room of
/// `NR · KG` bytes holds an even k-group in its low nibbles and the next one in its
/// high nibbles, unpacked by a mask and a shift next to the products.
fn block_nibbles(args: BlockArgs<'_>) {
    let BlockArgs { a, b, b_panel_stride, row_panels, col_panels, kgroups, acc, acc_stride, accumulate, .. } = args;
    block_impl::<true>(a, b, b_panel_stride, row_panels, col_panels, kgroups, acc, acc_stride, accumulate);
}

#[allow(clippy::too_many_arguments)]
#[multiversion(targets("x86_64+avx2", "x86_64+sse4.1", "aarch64+neon"))]
fn block_impl<const NIB: bool>(
    a: &[u8],
    b: &[i8],
    b_panel_stride: usize,
    row_panels: usize,
    col_panels: usize,
    kgroups: usize,
    acc: &mut [i32],
    acc_stride: usize,
    accumulate: bool,
) {
    let a_panel_len = kgroups * MR * KG;
    let b_panel_len = kgroups * NR * KG / if NIB { 2 } else { 1 };
    for jp in 0..col_panels {
        let b_panel = &b[jp * b_panel_stride..][..b_panel_len];
        for ip in 0..row_panels {
            let a_panel = &a[ip * a_panel_len..][..a_panel_len];
            let tile = if NIB { microkernel_nibbles(a_panel, b_panel) } else { microkernel(a_panel, b_panel) };
            for (i, row) in tile.iter().enumerate() {
                let dst = &mut acc[(ip * MR + i) * acc_stride + jp * NR..][..NR];
                if accumulate {
                    for (d, &v) in dst.iter_mut().zip(row) {
                        *d = d.wrapping_add(v);
                    }
                } else {
                    dst.copy_from_slice(row);
                }
            }
        }
    }
}

/// One `MR × NR` tile over the panels' k-groups. Each k-group contributes
/// `a0·b0 + a1·b1` per output: two products of at most 255·128 in magnitude, so the
/// pair sum fits easily in i32; only the running sum wraps.
#[inline(always)]
fn microkernel(a: &[u8], b: &[i8]) -> [[i32; NR]; MR] {
    let mut c = [[0i32; NR]; MR];
    for (ag, bg) in a.chunks_exact(MR * KG).zip(b.chunks_exact(NR * KG)) {
        for (i, row) in c.iter_mut().enumerate() {
            let a0 = i32::from(ag[KG * i]);
            let a1 = i32::from(ag[KG * i + 1]);
            for (j, cell) in row.iter_mut().enumerate() {
                let pair = a0 * i32::from(bg[KG * j]) + a1 * i32::from(bg[KG * j + 1]);
                *cell = cell.wrapping_add(pair);
            }
        }
    }
    c
}

/// [`microkernel`] against 4-bit weights: a room of `NR · KG` bytes per two k-groups,
/// the first in the low nibbles, the second in the high ones (values in `[0, 15]`).
#[inline(always)]
fn microkernel_nibbles(a: &[u8], b: &[i8]) -> [[i32; NR]; MR] {
    let mut c = [[0i32; NR]; MR];
    for (ag, room) in a.chunks_exact(2 * MR * KG).zip(b.chunks_exact(NR * KG)) {
        let (even, odd) = ag.split_at(MR * KG);
        for (i, row) in c.iter_mut().enumerate() {
            let [a0, a1] = [even[KG * i], even[KG * i + 1]].map(i32::from);
            let [a2, a3] = [odd[KG * i], odd[KG * i + 1]].map(i32::from);
            for (j, cell) in row.iter_mut().enumerate() {
                let (b0, b1) = (room[KG * j] as u8, room[KG * j + 1] as u8);
                let low = a0 * i32::from(b0 & 0x0f) + a1 * i32::from(b1 & 0x0f);
                let high = a2 * i32::from(b0 >> 4) + a3 * i32::from(b1 >> 4);
                *cell = cell.wrapping_add(low + high);
            }
        }
    }
    c
}
