//! Which ISAs this run exercises, and a check that they are the ones the run was
//! meant to test: CI runs the suite under emulated CPUs (`qemu-aarch64 -cpu
//! cortex-a57 / cortex-a76 / max`) with `QGEMM_EXPECT_ISAS` naming the tiers each CPU
//! has, so that a broken detector cannot hide a tier (or claim one) while the rest of
//! the suite passes on the tiers that remain. Every tier exercised is also run here
//! on the adversarial full-range data: A at 0 and 255 against weights at −128, −127
//! and 127, in pairs along K.

mod common;

use common::{GemmCase, Rng};
use qgemm::{Channelwise, ErrorKind, Isa, PackedWeights, Weights};

/// One line per ISA: its name, its kernel, the kernel's fast path and the depthwise
/// kernel.
fn describe(isa: Isa) -> String {
    let info = isa.kernel_info().expect("available ISAs have kernels");
    match info.fast_path {
        Some(fast) => format!("{isa} [{} + {fast}; depthwise {}]", info.name, info.depthwise),
        None => format!("{isa} [{}; depthwise {}]", info.name, info.depthwise),
    }
}

#[test]
fn the_tiers_this_run_exercises() {
    let available = qgemm::available_isas();
    let described: Vec<String> = available.iter().map(|&isa| describe(isa)).collect();
    println!("qgemm ISAs exercised ({}): {}", std::env::consts::ARCH, described.join(", "));
    if let Some(expected) = std::env::var("QGEMM_EXPECT_ISAS").ok().filter(|v| !v.trim().is_empty()) {
        let mut want: Vec<Isa> =
            expected.split(',').map(|name| name.parse().expect("QGEMM_EXPECT_ISAS names known ISAs")).collect();
        want.sort_unstable();
        let mut got = available.to_vec();
        got.sort_unstable();
        assert_eq!(got, want, "QGEMM_EXPECT_ISAS={expected}, but this CPU runs {}", described.join(", "));
        println!("qgemm ISAs as expected: {expected}");
    }
}

/// The activation at a flat index of A.
type ActivationAt = fn(usize) -> u8;

#[test]
fn every_tier_is_exact_on_adversarial_full_range_data() {
    let mut rng = Rng::new(0x7e5);
    // Tails of every tile here (4×4c16, 8×8c4, 8×8c8, 6×8c4, 6×16c4, 8×48c4, 4×32c2,
    // 8×32c4, and AMX's 32×32c4 with A in 64s, which takes M ≥ 32) and a K that makes
    // the i32 sums wrap (on AMX's tiles too: M = 33).
    let shapes = [(9, 13, 45), (17, 9, 130), (1, 33, 71), (40, 37, 200), (3, 5, 70_000), (33, 1, 70_000)];
    let weights: [(&str, [i8; 2]); 4] =
        [("−128/127", [-128, 127]), ("−127/127", [-127, 127]), ("all −128", [-128, -128]), ("all −127", [-127, -127])];
    let activations: [(&str, ActivationAt); 3] =
        [("all 0", |_| 0), ("all 255", |_| 255), ("255/0 pairs", |i| if (i / 2) % 2 == 0 { 255 } else { 0 })];
    for &(m, n, k) in &shapes {
        for (w_name, pair) in weights {
            for (a_name, a_at) in activations {
                for (a_zp, b_zp) in [(0u8, 0i8), (255, -128), (128, 127)] {
                    let mut case = GemmCase::random(&mut rng, m, n, k);
                    case.a = (0..m * k).map(a_at).collect();
                    case.b = (0..k * n).map(|i| pair[(i / n / 2) % 2]).collect();
                    case.a_zp = a_zp;
                    case.b_zp = Channelwise::PerTensor(b_zp);
                    let expected = case.expected();
                    for &isa in qgemm::available_isas() {
                        let (got, gaps_ok) = case.run(isa, 1);
                        assert!(gaps_ok, "{isa} wrote between output rows");
                        assert!(
                            got == expected,
                            "{isa}: A {a_name} (zp {a_zp}) against weights {w_name} (zp {b_zp}), {m}×{n}×{k}: {}",
                            common::first_mismatch(&got, &expected, n)
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn forcing_a_tier_this_cpu_lacks_is_an_error_not_a_crash() {
    let weights = Weights::kxn(&[1i8, 2, 3, 4], 2, 2);
    for &isa in Isa::ALL.iter().filter(|isa| !qgemm::available_isas().contains(isa)) {
        let e = qgemm::force_isa(Some(isa)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::IsaUnavailable, "{isa}: {e}");
        let e = PackedWeights::for_isa(isa, weights.clone()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::IsaUnavailable, "{isa}: {e}");
        assert!(e.to_string().contains(isa.name()), "{e}");
    }
    // Nothing was forced by the failures.
    if std::env::var_os("QGEMM_ISA").is_none() {
        assert_eq!(qgemm::selected_isa().unwrap(), qgemm::detected_isa());
    }
}

/// Where AMX runs, weights too shallow for its tiles (K below 128, or a convolution of
/// fewer than 16 channels per group) are packed for AVX-512 VNNI's kernels, which
/// were faster there on a Sapphire Rapids-class Xeon; deeper ones stay on the tiles.
#[test]
fn shallow_products_on_amx_run_on_avx512_vnni() {
    if !qgemm::available_isas().contains(&Isa::AmxInt8) {
        println!("amx-int8 does not run here: nothing to check");
        return;
    }
    let gemm_kernel = |k: usize| {
        let w = vec![1i8; k * 40];
        PackedWeights::for_isa(Isa::AmxInt8, Weights::kxn(&w, k, 40)).unwrap().kernel_info().name
    };
    let conv_kernel = |c: usize, kh: usize| {
        let p = qgemm::Conv2dParams::new([1, 8, 8, c], 32, [kh, kh]);
        let w = vec![1i8; 32 * kh * kh * c];
        qgemm::PackedConvWeights::for_isa(Isa::AmxInt8, qgemm::ConvWeights::new(&w, &p)).unwrap().kernel_info().name
    };
    for (what, name, amx) in [
        ("GEMM K = 127", gemm_kernel(127), false),
        ("GEMM K = 128", gemm_kernel(128), true),
        ("1×1 conv, 64 channels", conv_kernel(64, 1), false),
        ("3×3 conv, 64 channels (K = 576)", conv_kernel(64, 3), true),
        ("7×7 conv, 3 channels (K = 147)", conv_kernel(3, 7), false),
        ("3×3 conv, 16 channels (K = 144)", conv_kernel(16, 3), true),
    ] {
        let suffix = if amx { "-amx-int8" } else { "avx512vnni" };
        assert!(name.ends_with(suffix), "{what}: packed for {name}, not a …{suffix} kernel");
    }
}
