//! Packed A in every format and K-group the kernels use, against a naive model of the
//! layout (`kernels/src/pack.rs`): values, zero padding past K and past the last row,
//! and the row sums, for blocks that start and end anywhere in K. The flipped format
//! (`a ^ 0x80`, the NEON kernels') runs here on every architecture, so its packing and
//! its row sums (`Σ (a − 128)`) are checked natively and under miri, not only under
//! emulation.

mod common;

use common::{Rng, gemm_kernels};
use qgemm_kernels::Tile;
use qgemm_kernels::kernel::AFormat;
use qgemm_kernels::pack::pack_a;
use qgemm_kernels::rows::Rows;

/// The packed bytes and row sums the layout documentation describes.
fn model(
    a: &[u8],
    k: usize,
    rows: usize,
    tile: Tile,
    g0: usize,
    groups: usize,
    format: AFormat,
) -> (Vec<u8>, Vec<i32>) {
    let panels = rows.div_ceil(tile.mr);
    let mut bytes = Vec::new();
    let mut sums = vec![0i32; rows];
    for panel in 0..panels {
        for g in g0..g0 + groups {
            for i in 0..tile.mr {
                let r = panel * tile.mr + i;
                for kk in g * tile.ka..(g + 1) * tile.ka {
                    let real = r < rows && kk < k;
                    let v = if real { a[r * k + kk] } else { 0 };
                    if real {
                        sums[r] = sums[r].wrapping_add(i32::from(v) - format.offset());
                    }
                    match format {
                        AFormat::U8 => bytes.push(v),
                        AFormat::I16 => bytes.extend(u16::from(v).to_le_bytes()),
                        AFormat::FlippedI8 => bytes.push(v ^ 0x80),
                    }
                }
            }
        }
    }
    (bytes, sums)
}

#[test]
fn every_format_matches_the_layout() {
    let mut rng = Rng(0x9ac4_f0e5_0000_0001);
    let formats: [(usize, AFormat); 11] = [
        (1, AFormat::U8),
        (1, AFormat::I16),
        (2, AFormat::U8),
        (2, AFormat::I16),
        (4, AFormat::U8),
        (4, AFormat::I16),
        (4, AFormat::FlippedI8),
        (8, AFormat::U8),
        (8, AFormat::FlippedI8),
        (16, AFormat::U8),
        (16, AFormat::FlippedI8),
    ];
    // Under miri, a sample: a tail in K, rows past a panel.
    let ks: &[usize] = if cfg!(miri) { &[17, 40] } else { &[1, 3, 16, 17, 40, 63, 130] };
    let mrs: &[usize] = if cfg!(miri) { &[1, 6, 8] } else { &[1, 4, 6, 8] };
    for (kg, format) in formats {
        for &mr in mrs {
            for &k in ks {
                let all_rows = [1, mr, mr + 1, 2 * mr + 3];
                for &rows in if cfg!(miri) { &all_rows[2..3] } else { &all_rows[..] } {
                    let a: Vec<u8> = (0..rows * k).map(|_| rng.next() as u8).collect();
                    let tile = Tile::new(mr, 4, kg);
                    let total_groups = k.div_ceil(kg);
                    // The whole of K, then a block from the middle to past the end.
                    for (g0, groups) in [(0, total_groups), (total_groups / 2, total_groups - total_groups / 2 + 1)] {
                        let (want, want_sums) = model(&a, k, rows, tile, g0, groups, format);
                        let mut dst = vec![0x5a_u8; want.len() + 7];
                        let mut sums = vec![0i32; rows];
                        let rows_of_a = Rows::Matrix { data: &a, stride: k };
                        pack_a(tile, &rows_of_a, rows, k, g0, groups, format, &mut dst, Some(&mut sums), &mut []);
                        let label = format!("{format:?} kg {kg} mr {mr} k {k} rows {rows} groups {g0}+{groups}");
                        assert_eq!(&dst[..want.len()], &want[..], "{label}");
                        assert!(dst[want.len()..].iter().all(|&b| b == 0x5a), "{label}: wrote past the block");
                        assert_eq!(sums, want_sums, "{label}");
                    }
                }
            }
        }
    }
}

/// Each kernel packs A with its own packer (`Kernel::pack_a`: AVX2's on the x86
/// kernels), in the kernel's format and A K-group, for panels of its `mr` rows and for
/// one dense row: the layout of the model above, byte for byte, and the same row sums.
#[test]
fn every_kernels_packer_matches_the_layout() {
    let mut rng = Rng(0x9ac4_f0e5_0000_0002);
    let mut kernels = gemm_kernels();
    kernels.extend(kernels.clone().iter().filter_map(|k| k.fast_path()));
    let ks: &[usize] = if cfg!(miri) { &[17, 70] } else { &[1, 3, 16, 17, 40, 63, 64, 65, 130, 200] };
    for kernel in kernels {
        let (t, format) = (kernel.tile(), kernel.a_format());
        for &k in ks {
            for one_row in [false, true] {
                let mr = if one_row { 1 } else { t.mr };
                let all_rows = [1, mr + 1, 2 * mr + 3];
                for &rows in if cfg!(miri) { &all_rows[1..2] } else { &all_rows[..] } {
                    let a: Vec<u8> = (0..rows * k).map(|_| rng.next() as u8).collect();
                    // In B's K-groups, whole A groups: all of K, then from an A group in
                    // the middle to past the end.
                    let per = t.ka / t.kg;
                    let total = k.div_ceil(t.ka);
                    for (g0, groups) in [(0, total), (total / 2, total - total / 2 + 1)] {
                        let model_tile = Tile::new(mr, t.nr, t.kg).with_a_group(t.ka);
                        let (want, want_sums) = model(&a, k, rows, model_tile, g0, groups, format);
                        let mut dst = vec![0x5a_u8; want.len() + 9];
                        let mut sums = vec![0i32; rows];
                        let rows_of_a = Rows::Matrix { data: &a, stride: k };
                        let (g0b, groupsb) = (g0 * per, groups * per);
                        kernel.pack_a(&rows_of_a, rows, k, g0b, groupsb, one_row, &mut dst, Some(&mut sums), &mut []);
                        let label =
                            format!("{} k {k} rows {rows} one_row {one_row} groups {g0}+{groups}", kernel.name());
                        assert_eq!(&dst[..want.len()], &want[..], "{label}");
                        assert!(dst[want.len()..].iter().all(|&b| b == 0x5a), "{label}: wrote past the block");
                        assert_eq!(sums, want_sums, "{label}");
                        let row_sum = a[..k].iter().fold(0u32, |s, &v| s.wrapping_add(u32::from(v)));
                        assert_eq!(kernel.row_sum(&a[..k]), row_sum, "{label}: row sum");
                    }
                }
            }
        }
    }
}

#[test]
fn packed_b_panels_start_on_a_cache_line() {
    // No 64-byte vector load of a panel straddles two cache lines: the panels start on
    // one (every panel stride is a multiple of 64 for the AVX-512 tile), clones too.
    use qgemm_kernels::pack::{BLayout, PackedB};
    let mut rng = Rng(0x11ae_6400_0000_0001);
    let tiles = [Tile::new(8, 48, 4), Tile::new(6, 8, 4), Tile::new(4, 32, 2)];
    for tile in tiles {
        // Under miri (minutes per million packed values), the small shapes only.
        let shapes: &[(usize, usize)] =
            if cfg!(miri) { &[(1, 1), (5, 3), (30, 50)] } else { &[(1, 1), (5, 3), (300, 100), (4096, 200)] };
        for &(k, n) in shapes {
            let b: Vec<i8> = (0..k * n).map(|_| rng.next() as i8).collect();
            let packed = PackedB::try_new(tile, &b, BLayout::KxN, k, n, &[3]).unwrap();
            let copy = packed.clone();
            for p in [&packed, &copy] {
                assert_eq!(p.data().as_ptr().addr() % 64, 0, "k={k} n={n} {tile:?}");
                assert_eq!(p.data().len(), n.div_ceil(tile.nr) * k.div_ceil(tile.kg) * tile.kg * tile.nr);
            }
            assert_eq!(copy, packed);
        }
    }
}

#[test]
fn unpacking_gives_back_the_weights_and_rejects_other_bytes() {
    // Every kernel's tile: unpack(pack(B)) = B in both layouts, and a packing with a
    // non-zero padded value, or one byte short or long, is no packing.
    use qgemm_kernels::pack::{BLayout, PackedB, unpack};
    let mut rng = Rng(0x00a9_c4ed_0000_0007);
    for kernel in gemm_kernels() {
        let tile = kernel.tile();
        let shapes: &[(usize, usize)] =
            if cfg!(miri) { &[(1, 1), (5, 3)] } else { &[(1, 1), (5, 3), (70, 33), (129, 70)] };
        for &(k, n) in shapes {
            let b: Vec<i8> = (0..k * n).map(|_| rng.next() as i8).collect();
            let nxk: Vec<i8> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
            for (data, layout) in [(&b, BLayout::KxN), (&nxk, BLayout::NxK)] {
                let packed = PackedB::try_new(tile, data, layout, k, n, &[0]).unwrap();
                assert_eq!(packed.unpack(), b, "{} k={k} n={n} {layout:?}", kernel.name());
            }
            let packed = PackedB::try_new(tile, &b, BLayout::KxN, k, n, &[0]).unwrap();
            let data = packed.data();
            assert!(unpack(tile, k, n, &data[..data.len() - 1]).is_none());
            assert!(unpack(tile, k + tile.k_step(), n, data).is_none());
            // The last byte of the last panel is padding (past K, or past N).
            let mut padded = data.to_vec();
            if k % tile.k_step() != 0 || n % tile.nr != 0 {
                *padded.last_mut().unwrap() = 1;
                assert!(unpack(tile, k, n, &padded).is_none(), "{} k={k} n={n}", kernel.name());
            }
        }
    }
}
