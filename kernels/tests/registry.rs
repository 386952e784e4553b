//! The ISA registry against the kernels it hands out: each tier's feature list is
//! one this architecture's detection knows, a tier runs exactly where its features
//! are all detected, and every kernel a tier hands out (its GEMM kernel, the fast
//! path, the wide sibling, its depthwise kernel) is named for its tile
//! (`MRxNRcKG-…`, XNNPACK-style; depthwise `dwLANEScKG-…`).

use qgemm_kernels::Kernel;
use qgemm_kernels::pack::{BLayout, PackedB};
use qgemm_kernels::registry::{self, TIERS};

/// `MRxNRcKG-`, the start of a GEMM kernel's name.
fn tile_prefix(kernel: &Kernel) -> String {
    let t = kernel.tile();
    format!("{}x{}c{}-", t.mr, t.nr, t.kg)
}

#[test]
fn every_tier_lists_features_this_architecture_detects() {
    for tier in TIERS {
        if tier.arch.is_some_and(|arch| arch != std::env::consts::ARCH) {
            assert!(!tier.cpu_supports(), "{}: a tier of another architecture", tier.name);
            continue;
        }
        for feature in tier.features {
            assert!(registry::feature_detected(feature).is_some(), "{}: unknown feature {feature:?}", tier.name);
        }
        let all = tier.features.iter().all(|f| registry::feature_detected(f) == Some(true));
        assert_eq!(tier.cpu_supports(), all, "{}", tier.name);
        // A kernel exactly where the CPU runs the tier (the portable one everywhere).
        assert_eq!(tier.kernel().is_some(), tier.cpu_supports(), "{}", tier.name);
    }
    assert!(registry::PORTABLE.cpu_supports() && registry::PORTABLE.features.is_empty());
}

#[test]
fn names_are_unique_and_priorities_order_each_architecture() {
    for (i, a) in TIERS.iter().enumerate() {
        for b in &TIERS[i + 1..] {
            assert_ne!(a.name, b.name);
            if a.arch == b.arch {
                assert_ne!(a.priority, b.priority, "{} and {}", a.name, b.name);
            }
        }
        // A tier outranks the portable one, and every tier of its architecture whose
        // features it has all of.
        for b in TIERS {
            let subset = b.features.iter().all(|f| a.features.contains(f));
            if a.arch == b.arch && subset && a.name != b.name {
                assert!(a.priority > b.priority, "{} below {}", a.name, b.name);
            }
        }
        assert!(a.name == "portable" || a.priority > registry::PORTABLE.priority);
    }
}

#[test]
fn the_amx_model_is_named_for_its_tile_and_reads_a_in_tile_rows() {
    let model = qgemm_kernels::amx::model_kernel();
    assert!(model.name().starts_with(&tile_prefix(model)), "{}", model.name());
    let t = model.tile();
    assert_eq!((t.kg, t.ka, t.k_step()), (4, 64, 64));
    // AVX-512 VNNI's 8x32c4, which takes the AMX tier's small products, reads its weights.
    #[cfg(target_arch = "x86_64")]
    if let Some(narrow) = qgemm_kernels::x86_64::avx512_vnni::narrow_kernel() {
        let b = PackedB::try_new(t, &[1; 70 * 5], BLayout::KxN, 70, 5, &[0]).unwrap();
        assert!(b.fits(narrow.tile()) && b.k_padded() == 128, "{}", narrow.name());
        let other = PackedB::try_new(narrow.tile(), &[1; 70 * 5], BLayout::KxN, 70, 5, &[0]).unwrap();
        assert!(!other.fits(t), "K padded to 4 is not a whole number of AMX's steps");
    }
    // Where the CPU runs the AMX tier, its kernel has the model's tile and blocking.
    if let Some(amx) = registry::AMX_INT8.kernel() {
        assert_eq!((amx.tile(), amx.blocking()), (t, model.blocking()));
    }
}

#[test]
fn every_kernel_is_named_for_its_tile() {
    for tier in TIERS {
        let main: Vec<Kernel> =
            tier.kernel().into_iter().chain(tier.wide_kernel()).chain(tier.small_kernel()).copied().collect();
        let fast: Vec<Kernel> = main.iter().filter_map(Kernel::fast_path).collect();
        for kernel in main.iter().chain(&fast) {
            let prefix = tile_prefix(kernel);
            assert!(kernel.name().starts_with(&prefix), "{}: {} is not {prefix}…", tier.name, kernel.name());
        }
        if let Some(dw) = tier.dw_kernel() {
            assert!(dw.name().starts_with("dw"), "{}: depthwise {}", tier.name, dw.name());
        }
        if let Some(small) = tier.small_kernel() {
            // It runs the tier's small products on the tier's own packed weights.
            let main = tier.kernel().expect("a small kernel beside a main one");
            let b = PackedB::try_new(main.tile(), &[1; 70 * 5], BLayout::KxN, 70, 5, &[0]).unwrap();
            assert!(b.fits(small.tile()), "{}: {} cannot read {}'s weights", tier.name, small.name(), main.name());
            assert!(tier.small_rows > 0 && tier.small_rows <= 4 * main.tile().mr, "{}", tier.name);
        }
        if let Some(wide) = tier.wide_kernel() {
            let main = tier.kernel().expect("a wide kernel beside a main one");
            assert!(wide.tile().nr > main.tile().nr, "{}: the wide kernel is not wider", tier.name);
        }
    }
}

#[test]
fn a_shallow_tier_runs_wherever_its_tier_does() {
    for tier in TIERS {
        let Some(lower) = tier.shallow_tier() else {
            assert_eq!((tier.shallow_depth, tier.shallow_channels), (0, 0), "{}: a cut-over without a tier", tier.name);
            continue;
        };
        // Its weights are packed for the lower tier's kernels wherever the tier is
        // chosen: every feature they need is one the tier requires, on its architecture.
        assert_eq!(lower.arch, tier.arch, "{}: {}", tier.name, lower.name);
        for feature in lower.features {
            assert!(tier.features.contains(feature), "{}: {} needs {feature}", tier.name, lower.name);
        }
        assert!(lower.priority < tier.priority, "{}: {} is not a lower tier", tier.name, lower.name);
        assert!(tier.shallow_depth > 0 || tier.shallow_channels > 0, "{}: a shallow tier never chosen", tier.name);
        if tier.cpu_supports() {
            assert!(
                lower.cpu_supports() && lower.kernel().is_some(),
                "{}: {} does not run here",
                tier.name,
                lower.name
            );
        }
    }
}
