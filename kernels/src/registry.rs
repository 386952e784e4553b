//! The ISA registry: every tier's facts in one place, so that a new tier is a new
//! module plus one entry here (and the public crate's `Isa` variant and C constant).
//!
//! A [`Tier`] holds its name, the one list of CPU features its kernels use (read by
//! detection, [`Tier::cpu_supports`], and by each kernel's own constructor, so the two
//! cannot disagree), its GEMM kernels, its depthwise kernel and its priority. The
//! public crate's detection, forcing, `available_isas()` and error messages read
//! [`TIERS`].
//!
//! ```text
//!   tier           arch      features                                    priority
//!   portable       any       —                                             0
//!   avx2           x86_64    avx2                                         10
//!   avx-vnni       x86_64    avx2 avxvnni                                 20
//!   avx512-vnni    x86_64    avx512f avx512bw avx512vl avx512vnni avx2    30
//!   amx-int8       x86_64    amx-tile amx-int8 + avx512-vnni's             40
//!   neon           aarch64   neon                                         10
//!   neon-dotprod   aarch64   neon dotprod                                 20
//!   neon-i8mm      aarch64   neon dotprod i8mm                            30
//! ```

use std::sync::OnceLock;

use crate::Kernel;
use crate::dwconv::DwKernel;

/// One tier of kernels.
#[derive(Debug)]
pub struct Tier {
    /// The tier's name, as `QGEMM_ISA`, the study and the kernels' names spell it.
    pub name: &'static str,
    /// The architecture its kernels are built for (as `std::env::consts::ARCH` spells
    /// it), or `None` for code that runs anywhere.
    pub arch: Option<&'static str>,
    /// Every CPU feature its kernels use, as `is_x86_feature_detected!` and
    /// `is_aarch64_feature_detected!` spell them.
    pub features: &'static [&'static str],
    /// Among the tiers a CPU runs, the highest is the default.
    pub priority: u8,
    gemm: fn() -> Option<&'static Kernel>,
    wide: fn() -> Option<&'static Kernel>,
    small: fn() -> Option<&'static Kernel>,
    /// Products of fewer rows than this run on [`Tier::small_kernel`] (0: none).
    pub small_rows: usize,
    /// Weights shallower than this ([`Tier::shallow_tier`]; 0: none).
    pub shallow_depth: usize,
    /// Convolutions with fewer input channels per group than this
    /// ([`Tier::shallow_tier`]; 0: none).
    pub shallow_channels: usize,
    shallow: fn() -> Option<&'static Tier>,
    depthwise: fn() -> Option<&'static DwKernel>,
    detected: OnceLock<bool>,
}

impl Tier {
    /// Whether this CPU has every feature of [`Tier::features`] and the tier is built
    /// for this architecture (whether or not this build has its kernels). Cached.
    pub fn cpu_supports(&self) -> bool {
        *self.detected.get_or_init(|| {
            self.arch.is_none_or(|arch| arch == std::env::consts::ARCH)
                && self.features.iter().all(|f| feature_detected(f) == Some(true))
        })
    }

    /// The tier's GEMM kernel, where this build has one and this CPU runs it.
    pub fn kernel(&self) -> Option<&'static Kernel> {
        (self.gemm)()
    }

    /// A sibling GEMM kernel of the tier with wider panels, for products whose N
    /// fills them with less padding (AVX-512 VNNI's `6x64c4`), where there is one.
    pub fn wide_kernel(&self) -> Option<&'static Kernel> {
        (self.wide)()
    }

    /// A kernel of a lower tier (whose features the tier has) for products of fewer
    /// than [`Tier::small_rows`] rows, too few to fill the tier's own tiles, on the
    /// same packed weights (`PackedB::fits`), where the tier has one (AMX: AVX-512
    /// VNNI's `8x32c4`, for the GEMV and small M).
    pub fn small_kernel(&self) -> Option<&'static Kernel> {
        // Only where the tier itself runs: the small kernel's own features are fewer.
        if self.cpu_supports() { (self.small)() } else { None }
    }

    /// A lower tier (whose features the tier has) whose kernels the tier's weights are
    /// packed for where the product is too shallow for the tier's own: a depth K (a
    /// convolution's KH·KW·C/groups) below [`Tier::shallow_depth`], or a convolution
    /// with fewer than [`Tier::shallow_channels`] input channels per group (AMX: AVX-512
    /// VNNI, whose kernels then also read A in place). `None` where the tier has none.
    pub fn shallow_tier(&self) -> Option<&'static Tier> {
        (self.shallow)()
    }

    /// The tier's depthwise kernel (its own, or a lower tier's that needs no feature
    /// the tier lacks); `None` where the portable one (`dwconv::portable_kernel`)
    /// serves.
    pub fn dw_kernel(&self) -> Option<&'static DwKernel> {
        (self.depthwise)()
    }
}

/// Whether this CPU has feature `name` (as the detection macros spell it); `None`
/// for a name the registry does not know on this architecture.
pub fn feature_detected(name: &str) -> Option<bool> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        Some(match name {
            "avx2" => has!("avx2"),
            "avxvnni" => has!("avxvnni"),
            "avx512f" => has!("avx512f"),
            "avx512bw" => has!("avx512bw"),
            "avx512vl" => has!("avx512vl"),
            "avx512vnni" => has!("avx512vnni"),
            // Not in std's stable detection; `amx-tile` includes the OS's permission.
            "amx-tile" => crate::x86_64::amx_int8::tiles_usable(),
            "amx-int8" => crate::x86_64::amx_int8::has_amx_int8(),
            _ => return None,
        })
    }
    #[cfg(target_arch = "aarch64")]
    {
        use std::arch::is_aarch64_feature_detected as has;
        Some(match name {
            "neon" => has!("neon"),
            "dotprod" => has!("dotprod"),
            "i8mm" => has!("i8mm"),
            _ => return None,
        })
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = name;
        None
    }
}

/// No kernel (a tier of another architecture, or none of this kind).
fn none<T>() -> Option<&'static T> {
    None
}

/// `$f` on `$arch`, else [`none`]: a tier's entry point wherever it is compiled.
macro_rules! on {
    ($arch:literal, $f:expr) => {{
        #[cfg(target_arch = $arch)]
        let f = $f;
        #[cfg(not(target_arch = $arch))]
        let f = none;
        f
    }};
}

/// Plain Rust: runs anywhere.
pub static PORTABLE: Tier = Tier {
    name: "portable",
    arch: None,
    features: &[],
    priority: 0,
    gemm: || Some(crate::portable::kernel()),
    wide: none,
    small: none,
    small_rows: 0,
    shallow_depth: 0,
    shallow_channels: 0,
    shallow: || None,
    depthwise: none,
    detected: OnceLock::new(),
};

/// x86-64 AVX2.
pub static AVX2: Tier = Tier {
    name: "avx2",
    arch: Some("x86_64"),
    features: &["avx2"],
    priority: 10,
    gemm: on!("x86_64", crate::x86_64::avx2::kernel),
    wide: none,
    small: none,
    small_rows: 0,
    shallow_depth: 0,
    shallow_channels: 0,
    shallow: || None,
    depthwise: on!("x86_64", crate::x86_64::avx2_dwconv::dw_kernel),
    detected: OnceLock::new(),
};

/// x86-64 AVX-VNNI (VEX-encoded `vpdpbusd`), on AVX2's depthwise kernel (its
/// `vpdpbusd` has no use in a depthwise kernel that widens both operands to i16).
pub static AVX_VNNI: Tier = Tier {
    name: "avx-vnni",
    arch: Some("x86_64"),
    features: &["avx2", "avxvnni"],
    priority: 20,
    gemm: on!("x86_64", crate::x86_64::avx_vnni::kernel),
    wide: none,
    small: none,
    small_rows: 0,
    shallow_depth: 0,
    shallow_channels: 0,
    shallow: || None,
    depthwise: on!("x86_64", crate::x86_64::avx2_dwconv::dw_kernel),
    detected: OnceLock::new(),
};

/// x86-64 AVX-512 F/BW/VL with VNNI (and AVX2, which its packing and epilogues use and
/// every such CPU has).
pub static AVX512_VNNI: Tier = Tier {
    name: "avx512-vnni",
    arch: Some("x86_64"),
    features: &["avx512f", "avx512bw", "avx512vl", "avx512vnni", "avx2"],
    priority: 30,
    gemm: on!("x86_64", crate::x86_64::avx512_vnni::kernel),
    wide: on!("x86_64", crate::x86_64::avx512_vnni::wide_kernel),
    small: none,
    small_rows: 0,
    shallow_depth: 0,
    shallow_channels: 0,
    shallow: || None,
    depthwise: on!("x86_64", crate::x86_64::avx512_dwconv::dw_kernel),
    detected: OnceLock::new(),
};

/// x86-64 AMX-INT8 (`tdpbusd` on tile registers), with AVX-512 VNNI's features: its
/// epilogue is AVX-512's, its depthwise kernel AVX-512 VNNI's, and products of fewer
/// than 8 rows run on an AVX-512 VNNI kernel ([`Tier::small_kernel`]). The cut-over
/// was measured on a Sapphire Rapids-class Xeon (`qgemm-bench --cutover --isa
/// amx-int8`): the tiles win from M = 4 on at K × N = 1024 × 1024, from 2 on at
/// 4096 × 4096 and from 8 or 12 on at 768 × 3072 (within 5% at 8); below 8 rows the
/// GEMV and the smallest products keep AVX-512 VNNI's one-row and 8-row kernels.
/// Weights shallower than K = 128, and convolutions of fewer than 16 channels per
/// group, are packed for AVX-512 VNNI ([`Tier::shallow_tier`]): at M = 3136 and N =
/// 256, AMX against AVX-512 VNNI was 0.56× at K = 32, 0.90× at 64, 1.04× at 96, 1.28×
/// at 128 and 1.78× at 256 (at N = 64: 0.71× at 64, 1.01× at 128, 1.12× at 192); the
/// 7×7 convolution over 3 channels (K = 147, im2col) ran at 0.51×.
pub static AMX_INT8: Tier = Tier {
    name: "amx-int8",
    arch: Some("x86_64"),
    features: &["amx-tile", "amx-int8", "avx512f", "avx512bw", "avx512vl", "avx512vnni", "avx2"],
    priority: 40,
    gemm: on!("x86_64", crate::x86_64::amx_int8::kernel),
    wide: none,
    small: on!("x86_64", crate::x86_64::avx512_vnni::narrow_kernel),
    small_rows: 8,
    shallow_depth: 128,
    shallow_channels: 16,
    shallow: || Some(&AVX512_VNNI),
    depthwise: on!("x86_64", crate::x86_64::avx512_dwconv::dw_kernel),
    detected: OnceLock::new(),
};

/// AArch64 NEON (ARMv8.0).
pub static NEON: Tier = Tier {
    name: "neon",
    arch: Some("aarch64"),
    features: &["neon"],
    priority: 10,
    gemm: on!("aarch64", crate::aarch64::neon::kernel),
    wide: none,
    small: none,
    small_rows: 0,
    shallow_depth: 0,
    shallow_channels: 0,
    shallow: || None,
    depthwise: none,
    detected: OnceLock::new(),
};

/// AArch64 NEON with the dot-product extension.
pub static NEON_DOTPROD: Tier = Tier {
    name: "neon-dotprod",
    arch: Some("aarch64"),
    features: &["neon", "dotprod"],
    priority: 20,
    gemm: on!("aarch64", crate::aarch64::neon_dotprod::kernel),
    wide: none,
    small: none,
    small_rows: 0,
    shallow_depth: 0,
    shallow_channels: 0,
    shallow: || None,
    depthwise: none,
    detected: OnceLock::new(),
};

/// AArch64 NEON with the int8 matrix-multiply extension (and dotprod, which every
/// CPU with i8mm has and the tier's requirement has always named).
pub static NEON_I8MM: Tier = Tier {
    name: "neon-i8mm",
    arch: Some("aarch64"),
    features: &["neon", "dotprod", "i8mm"],
    priority: 30,
    gemm: on!("aarch64", crate::aarch64::neon_i8mm::kernel),
    wide: none,
    small: none,
    small_rows: 0,
    shallow_depth: 0,
    shallow_channels: 0,
    shallow: || None,
    depthwise: none,
    detected: OnceLock::new(),
};

/// Every tier, in the public crate's `Isa` order (its C ABI values).
pub static TIERS: [&Tier; 8] = [&PORTABLE, &AVX2, &AVX_VNNI, &AVX512_VNNI, &NEON, &NEON_DOTPROD, &NEON_I8MM, &AMX_INT8];
