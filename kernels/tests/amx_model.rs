//! The scalar model of AMX's tiles (`qgemm_kernels::amx::TileModel`) against the
//! architecture's definition of `tileloadd`, `tdpbusd` and `tilestored`, computed here
//! independently: strided loads and stores of the configured rows only, u8 × i8
//! products in groups of four added with wrap-around, the shapes `tdpbusd` requires,
//! and bounds that refuse a tile past its slice (what the `asm!` instance checks
//! before each instruction). The loop nest on the model runs through every kernel
//! test natively (`32x32c4-amx-model` in `common::gemm_kernels`), and here under miri
//! on products small enough for it (each `tdpbusd` of the model is 16,384 interpreted
//! multiply-adds), with every edge of the loop nest still crossed.

mod common;

use common::Rng;
use qgemm_kernels::Blocking;
use qgemm_kernels::amx::{TileConfig, TileModel, TileOps, model_kernel, tile_fits};
use qgemm_kernels::driver::{GemmArgs, gemm};
use qgemm_kernels::output::{OutData, OutView, OutputStage, Param, Requant, Rounding, Scheme};
use qgemm_kernels::pack::{BLayout, PackedB};
use qgemm_kernels::rows::Rows;
use qgemm_reference as reference;

fn config(rows: u8, colsb: u16) -> TileConfig {
    let mut c = TileConfig::FULL;
    for t in 0..8 {
        c.rows[t] = rows;
        c.colsb[t] = colsb;
    }
    c
}

/// `C += A · B` by the definition: `C[m][n] += Σ_k Σ_i A[m][4k+i] · B[k][4n+i]`.
fn definition(c: &mut [i32], a: &[u8], b: &[i8], m: usize, n: usize, k4: usize) {
    for mi in 0..m {
        for ni in 0..n {
            let mut s = c[mi * n + ni];
            for k in 0..k4 {
                for i in 0..4 {
                    s = s.wrapping_add(i32::from(a[mi * 4 * k4 + 4 * k + i]) * i32::from(b[k * 4 * n + 4 * ni + i]));
                }
            }
            c[mi * n + ni] = s;
        }
    }
}

#[test]
fn tdpbusd_matches_its_definition_on_every_shape() {
    let mut rng = Rng(0xa3c5_0000_0000_0001);
    // (rows of C and A, bytes per row of C and B = 4N, bytes per row of A = 4K).
    for (m, n, k4) in [(16, 16, 16), (1, 1, 1), (16, 3, 5), (7, 16, 16), (3, 9, 2)] {
        let mut tiles = TileModel::default();
        let mut cfg = config(0, 0);
        cfg.rows[0] = m as u8;
        cfg.colsb[0] = (4 * n) as u16; // C
        cfg.rows[4] = m as u8;
        cfg.colsb[4] = (4 * k4) as u16; // A
        cfg.rows[6] = k4 as u8;
        cfg.colsb[6] = (4 * n) as u16; // B
        tiles.configure(&cfg);
        // Strided sources with junk between rows that must not be read.
        let (sa, sb, sc) = (4 * k4 + 3, 4 * n + 5, n + 2);
        let a: Vec<u8> = (0..m * sa).map(|i| if i % 5 == 0 { 255 } else { rng.next() as u8 }).collect();
        let b: Vec<i8> = (0..k4 * sb).map(|i| if i % 7 == 0 { -128 } else { rng.next() as i8 }).collect();
        let c0: Vec<i32> = (0..m * sc).map(|_| rng.next() as i32).collect();
        tiles.load::<4, u8>(&a, sa);
        tiles.load::<6, i8>(&b, sb);
        tiles.load::<0, i32>(&c0, sc);
        for _ in 0..3 {
            tiles.dot::<0, 4, 6>();
        }
        let mut out = vec![0x5a5a_5a5a_i32; m * sc];
        tiles.store::<0, i32>(&mut out, sc);
        // The dense operands, then the definition three times.
        let dense_a: Vec<u8> = (0..m).flat_map(|r| a[r * sa..][..4 * k4].to_vec()).collect();
        let dense_b: Vec<i8> = (0..k4).flat_map(|r| b[r * sb..][..4 * n].to_vec()).collect();
        let mut want: Vec<i32> = (0..m).flat_map(|r| c0[r * sc..][..n].to_vec()).collect();
        for _ in 0..3 {
            definition(&mut want, &dense_a, &dense_b, m, n, k4);
        }
        for r in 0..m {
            assert_eq!(&out[r * sc..][..n], &want[r * n..][..n], "{m}×{n}×{k4}: row {r}");
            assert!(out[r * sc + n..(r + 1) * sc].iter().all(|&v| v == 0x5a5a_5a5a), "stored past the row");
        }
    }
}

#[test]
fn sums_wrap_like_the_reference() {
    // 255 × −128 (and × 127), 64 per product, added to sums that start near the ends
    // of i32: past them in both directions. Natively, K = 70,000 from near the ends;
    // under miri (slow), three products.
    let mut tiles = TileModel::default();
    tiles.configure(&TileConfig::FULL);
    let a = [255u8; 16 * 64];
    let (neg, pos) = ([-128i8; 16 * 64], [127i8; 16 * 64]);
    let (low, high) = ([i32::MIN + 1_000_000; 16 * 16], [i32::MAX - 1_000_000; 16 * 16]);
    tiles.load::<4, u8>(&a, 64);
    tiles.load::<6, i8>(&neg, 64);
    tiles.load::<7, i8>(&pos, 64);
    tiles.load::<0, i32>(&low, 16);
    tiles.load::<1, i32>(&high, 16);
    let steps = if cfg!(miri) { 3 } else { 70_000 / 64 };
    for _ in 0..steps {
        tiles.dot::<0, 4, 6>();
        tiles.dot::<1, 4, 7>();
    }
    for (t, start, product) in [(0, low[0], 255 * -128 * 64), (1, high[0], 255 * 127 * 64)] {
        let mut out = [0i32; 16 * 16];
        match t {
            0 => tiles.store::<0, i32>(&mut out, 16),
            _ => tiles.store::<1, i32>(&mut out, 16),
        }
        let want = (0..steps).fold(start, |s, _| s.wrapping_add(product));
        assert!(out.iter().all(|&v| v == want), "tile {t}: {} vs {want}", out[0]);
        let exact = i64::from(start) + i64::from(product) * steps as i64;
        assert!(i32::try_from(exact).is_err(), "tile {t}: the sum did not leave i32");
    }
}

#[test]
fn a_tile_past_its_slice_is_refused() {
    assert!(tile_fits::<u8>(16 * 64, 16, 64, 64));
    assert!(!tile_fits::<u8>(16 * 64 - 1, 16, 64, 64));
    assert!(tile_fits::<i32>(15 * 40 + 16, 16, 64, 40));
    assert!(!tile_fits::<i32>(15 * 40 + 15, 16, 64, 40));
    assert!(!tile_fits::<u8>(64, 16, 64, usize::MAX));
    let short = std::panic::catch_unwind(|| {
        let mut tiles = TileModel::default();
        tiles.configure(&TileConfig::FULL);
        tiles.load::<4, u8>(&[0u8; 16 * 64 - 1], 64);
    });
    assert!(short.is_err(), "a load one byte short was accepted");
    let unconfigured = std::panic::catch_unwind(|| TileModel::default().zero::<0>());
    assert!(unconfigured.is_err(), "a tile instruction before ldtilecfg was accepted");
    let mismatched = std::panic::catch_unwind(|| {
        let mut tiles = TileModel::default();
        let mut cfg = TileConfig::FULL;
        cfg.rows[6] = 8; // B's rows must be A's bytes per row / 4 = 16
        tiles.configure(&cfg);
        tiles.dot::<0, 4, 6>();
    });
    assert!(mismatched.is_err(), "tdpbusd on mismatched shapes was accepted");
}

/// The loop nest on the model through the driver: both halves of a tile in M and N
/// and a lone row and column past them, K in two blocks of the tiny blocking (the
/// second through the accumulators, then fused with the stage), per-column weight
/// zero points (row sums), i32 with bias and u8 by fixed point, against the reference.
#[test]
fn loop_nest_on_the_model_matches_the_reference() {
    let mut rng = Rng(0xa3c5_0000_0000_0002);
    let base = *model_kernel();
    let tiny = base.with_blocking(Blocking { mc: 32, kc: 64, nc: 32 });
    let shapes: &[(usize, usize, usize)] =
        if cfg!(miri) { &[(17, 17, 65)] } else { &[(17, 17, 65), (33, 40, 200), (64, 64, 1100), (1, 3, 7)] };
    for &(m, n, k) in shapes {
        for kernel in if cfg!(miri) { [tiny].to_vec() } else { [base, tiny].to_vec() } {
            let a: Vec<u8> = (0..m * k).map(|i| if i % 3 == 0 { 255 } else { rng.next() as u8 }).collect();
            let b: Vec<i8> = (0..k * n).map(|i| if i % 5 == 0 { -128 } else { rng.next() as i8 }).collect();
            let b_zp: Vec<i8> = (0..n).map(|_| rng.next() as i8).collect();
            let bias: Vec<i32> = (0..n).map(|_| rng.next() as i32 >> 8).collect();
            let a_zp = 131;
            let packed = PackedB::try_new(kernel.tile(), &b, BLayout::KxN, k, n, &b_zp).unwrap();
            let ref_zp = reference::Channelwise::PerChannel(b_zp.clone());
            let problem = reference::GemmProblem {
                m,
                n,
                k,
                a: &a,
                a_row_stride: k,
                a_zero_point: a_zp,
                b: &b,
                b_layout: reference::WeightLayout::KxN,
                b_zero_point: &ref_zp,
            };
            let run = |stage: OutputStage<'_>, out: OutData<'_>| {
                let args = GemmArgs {
                    m,
                    a: Rows::Matrix { data: &a, stride: k },
                    a_zp,
                    b: &packed,
                    stage,
                    columns: 0..n,
                    out,
                };
                gemm(&kernel, args);
            };
            let label = format!("{} m={m} n={n} k={k} blocking {:?}", kernel.name(), kernel.blocking());
            let mut out = vec![0i32; m * n];
            run(OutputStage { bias: Some(&bias), requant: None }, OutData::I32(OutView::new(&mut out, m, n, n)));
            let stage = reference::OutputStage::new(Some(bias.clone()), None);
            let expected = reference::gemm(&problem, &stage, reference::OutputType::I32);
            assert_eq!(reference::OutputData::I32(out), expected, "{label}");

            let mut out = vec![0u8; m * n];
            let scheme = Scheme::FixedPoint {
                rounding: Rounding::DoubleTiesAway,
                multiplier: Param::Tensor(1 << 30),
                shift: Param::Tensor(-12),
            };
            let requant = Requant { scheme, zero_point: 100, min: 3, max: 250 };
            run(OutputStage { bias: None, requant: Some(requant) }, OutData::U8(OutView::new(&mut out, m, n, n)));
            let stage = reference::OutputStage::requantized(reference::Requantize::from_i32(
                reference::Requantization::FixedPoint(reference::FixedPointParams::new(
                    reference::Channelwise::PerTensor(1 << 30),
                    reference::Channelwise::PerTensor(-12),
                )),
                100,
                3,
                250,
            ));
            let expected = reference::gemm(&problem, &stage, reference::OutputType::U8);
            assert_eq!(reference::OutputData::U8(out), expected, "{label}");
        }
    }
}
