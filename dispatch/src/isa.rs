//! CPU feature detection, kernel selection, and forcing an ISA.
//!
//! Each [`Isa`] is a tier of the kernels crate's registry
//! ([`qgemm_kernels::registry`]), which holds its name, CPU features, kernels and
//! priority: this module reads them there. Detection runs once per process and is
//! cached; kernels are reached only through [`kernel_for`], which refuses an ISA the
//! CPU lacks, so no `#[target_feature]` code can run on a CPU without the feature.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

use qgemm_kernels::Kernel;
use qgemm_kernels::dwconv::{self, DwKernel};
use qgemm_kernels::pack::PackedB;
use qgemm_kernels::registry::{self, Tier};

use crate::error::{Error, Result, bail};

/// An instruction-set target of qgemm's kernels.
///
/// Every variant names a target of the design; [`available_isas`] says which have a
/// kernel in this build that this CPU can run. Names (`Display`, `FromStr`, and
/// `QGEMM_ISA`) are the lower-case strings of [`Isa::name`].
///
/// The discriminants are the C ABI's `QGEMM_ISA_*` values, and the index of the tier
/// in [`registry::TIERS`]; which ISA a CPU prefers is the tier's priority, not this
/// order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Isa {
    /// Plain Rust, blocked and packed, multiversioned for AVX2/SSE4.1/NEON; runs anywhere.
    Portable = 0,
    /// x86-64 AVX2.
    Avx2 = 1,
    /// x86-64 AVX-VNNI (VEX-encoded `vpdpbusd`).
    AvxVnni = 2,
    /// x86-64 AVX-512 with VNNI, BW and VL.
    Avx512Vnni = 3,
    /// AArch64 NEON (ARMv8.0).
    Neon = 4,
    /// AArch64 NEON with the dot-product extension.
    NeonDotprod = 5,
    /// AArch64 NEON with the int8 matrix-multiply extension.
    NeonI8mm = 6,
    /// x86-64 AMX-INT8 (`tdpbusd` on tile registers; Sapphire Rapids and later Xeons),
    /// with AVX-512 VNNI for products of few rows. Needs the OS's permission, which
    /// detection asks for on Linux.
    AmxInt8 = 7,
}

impl Isa {
    /// Every ISA, from the most portable to the most specific within each architecture.
    /// A slice, so that its type stays the same when a version adds an ISA.
    pub const ALL: &'static [Isa] = &[
        Isa::Portable,
        Isa::Avx2,
        Isa::AvxVnni,
        Isa::Avx512Vnni,
        Isa::Neon,
        Isa::NeonDotprod,
        Isa::NeonI8mm,
        Isa::AmxInt8,
    ];

    /// The ISA's tier in the kernels crate's registry.
    fn tier(self) -> &'static Tier {
        registry::TIERS[self as usize]
    }

    /// The ISA's name, as `QGEMM_ISA` and the throughput study spell it.
    pub fn name(self) -> &'static str {
        self.tier().name
    }

    /// The CPU features the ISA needs, as the detection macros spell them: the one
    /// list that detection and the ISA's kernels check.
    pub fn required_features(self) -> &'static [&'static str] {
        self.tier().features
    }

    /// True when this CPU has every feature the ISA needs (whether or not this build
    /// has a kernel for it). Cached: the CPU is queried once per process.
    pub fn cpu_supports(self) -> bool {
        cpu().supported & (1 << self as u8) != 0
    }

    /// The microkernel this build has for the ISA, whatever the CPU: its name,
    /// `MR × NR` tile and K-group. `None` where no kernel exists yet.
    pub fn kernel_info(self) -> Option<KernelInfo> {
        KernelInfo::of(built_kernel(self)?, self)
    }

    fn from_index(i: u8) -> Option<Isa> {
        Isa::ALL.iter().copied().find(|isa| *isa as u8 == i)
    }
}

impl KernelInfo {
    /// The description of `kernel`, one of `isa`'s.
    pub(crate) fn of(kernel: &Kernel, isa: Isa) -> Option<KernelInfo> {
        let tile = kernel.tile();
        let fast_path = kernel.fast_path().map(|f| f.name());
        let depthwise = dw_kernel_for(isa).ok()?.name();
        Some(KernelInfo { name: kernel.name(), fast_path, mr: tile.mr, nr: tile.nr, k_group: tile.kg, depthwise })
    }
}

/// A microkernel's identity and register tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KernelInfo {
    /// `MRxNRcKG-isa`, as in `4x32c2-portable`.
    pub name: &'static str,
    /// The kernel's fast path, if it has one: the same tile summing two products per
    /// i16 lane, run only where that cannot overflow, so it is exact too. AVX2's
    /// (`vpmaddubsw`) runs on blocks whose activations are all ≤ 127 or with weights
    /// whose aligned pairs have `|w0| + |w1| ≤ 128`; NEON's (`smlal2`) with weights
    /// that exclude −128 (TFLite's int8 weight range).
    pub fast_path: Option<&'static str>,
    /// Rows per tile.
    pub mr: usize,
    /// Columns per tile.
    pub nr: usize,
    /// K values packed together.
    pub k_group: usize,
    /// The depthwise convolution kernel, as in `dw8c2-avx2-madd`.
    pub depthwise: &'static str,
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Isa {
    type Err = Error;

    fn from_str(s: &str) -> Result<Isa> {
        let wanted = s.trim();
        match Isa::ALL.iter().find(|isa| isa.name().eq_ignore_ascii_case(wanted)) {
            Some(&isa) => Ok(isa),
            None => {
                let names: Vec<&str> = Isa::ALL.iter().map(|i| i.name()).collect();
                bail!(UnknownIsa, "unknown ISA {s:?}; known ISAs: {}", names.join(", "))
            }
        }
    }
}

/// The kernel this build has for `isa` where the CPU runs it (the registry's
/// constructors check the tier's features). Only [`kernel_for`] hands kernels to
/// callers.
fn built_kernel(isa: Isa) -> Option<&'static Kernel> {
    isa.tier().kernel()
}

/// The depthwise kernel for `isa`, once [`kernel_for`] has accepted it: the tier's
/// (AVX-512 VNNI's `dw16c2-avx512-vnni`; AVX2's for AVX2 and AVX-VNNI, whose
/// `vpdpbusd` has no use in a depthwise kernel that widens both operands to i16),
/// else the portable one, which runs everywhere.
pub(crate) fn dw_kernel_for(isa: Isa) -> Result<&'static DwKernel> {
    kernel_for(isa)?;
    Ok(isa.tier().dw_kernel().unwrap_or(dwconv::portable_kernel()))
}

/// What detection found, computed once.
struct Cpu {
    /// Bit `isa as u8` is set when the CPU has every feature `isa` needs.
    supported: u32,
    /// The ISAs with a kernel in this build that this CPU runs, in `Isa` order.
    available: Vec<Isa>,
    /// The one of them with the highest priority.
    best: Isa,
}

fn cpu() -> &'static Cpu {
    static CPU: OnceLock<Cpu> = OnceLock::new();
    CPU.get_or_init(|| {
        let supported =
            Isa::ALL.iter().filter(|isa| isa.tier().cpu_supports()).fold(0u32, |bits, isa| bits | 1 << *isa as u8);
        let available: Vec<Isa> = Isa::ALL
            .iter()
            .copied()
            .filter(|isa| supported & (1 << *isa as u8) != 0 && built_kernel(*isa).is_some())
            .collect();
        let best = available.iter().copied().max_by_key(|isa| isa.tier().priority).unwrap_or(Isa::Portable);
        Cpu { supported, available, best }
    })
}

/// Every ISA with a kernel in this build that this CPU can run, in [`Isa::ALL`]'s
/// order (from the most portable to the most specific within each architecture).
/// Always contains [`Isa::Portable`]. Tests and benchmarks iterate over it.
pub fn available_isas() -> &'static [Isa] {
    &cpu().available
}

/// The best ISA this CPU runs (the highest priority of the registry), ignoring any
/// forcing.
pub fn detected_isa() -> Isa {
    cpu().best
}

/// The kernel for `isa`, or an error that says why it cannot run here. This is the
/// only way to a kernel: it is what keeps `#[target_feature]` code behind detection.
pub(crate) fn kernel_for(isa: Isa) -> Result<&'static Kernel> {
    if !isa.cpu_supports() {
        bail!(
            IsaUnavailable,
            "ISA {isa} needs CPU features {:?}, which this CPU ({}) lacks; available: {}",
            isa.required_features(),
            std::env::consts::ARCH,
            list(available_isas())
        );
    }
    match built_kernel(isa) {
        Some(kernel) => Ok(kernel),
        None => {
            bail!(IsaUnavailable, "this build of qgemm has no {isa} kernel yet; available: {}", list(available_isas()))
        }
    }
}

/// The kernel for `isa` and products of `n` columns (a GEMM's N, a convolution
/// group's output channels): the tier's kernel, or a sibling of the same tier whose
/// panels leave fewer padding columns (AVX-512 VNNI: `6x64c4` where N is a multiple of
/// 64 but not of 48, as 64 and 256 channels are).
pub(crate) fn kernel_for_columns(isa: Isa, n: usize) -> Result<&'static Kernel> {
    let main = kernel_for(isa)?;
    // (An N that overflows when padded gets the tier's kernel, whose packing then
    // reports the overflow.)
    let padding = |k: &Kernel| n.checked_next_multiple_of(k.tile().nr).map_or(usize::MAX, |p| p - n);
    match isa.tier().wide_kernel() {
        Some(wide) if padding(wide) < padding(main) => Ok(wide),
        _ => Ok(main),
    }
}

/// The kernel to pack weights of depth `k` (a convolution's KH·KW·C/groups, with
/// `channels` input channels per group) and `n` columns for, on `isa`: that of
/// [`kernel_for_columns`], or where the product is too shallow for the tier's own
/// kernel, that of the lower tier it names for such products (AMX: AVX-512 VNNI below
/// K = 128 or 16 channels; see `registry::AMX_INT8`). The weights still say `isa`.
pub(crate) fn kernel_for_weights(isa: Isa, k: usize, n: usize, channels: Option<usize>) -> Result<&'static Kernel> {
    let tier = isa.tier();
    let shallow = k < tier.shallow_depth || channels.is_some_and(|c| c < tier.shallow_channels);
    let lower = tier.shallow_tier().and_then(|t| Isa::ALL.iter().copied().find(|i| std::ptr::eq(i.tier(), t)));
    match lower {
        // Checked first: an unavailable ISA's error names the ISA asked for.
        Some(lower) if shallow && kernel_for(isa).is_ok() => kernel_for_columns(lower, n),
        _ => kernel_for_columns(isa, n),
    }
}

/// The kernel that runs a product of `m` rows on weights `b`, packed for `packed` (a
/// kernel of `isa`): the tier's kernel for small products where M is below its
/// cut-over and it reads the same packing (AMX: AVX-512 VNNI's `8x32c4` for M < 8,
/// see `registry::AMX_INT8`), else `packed`. Either computes the same bytes.
pub(crate) fn kernel_for_rows(isa: Isa, packed: &'static Kernel, b: &PackedB, m: usize) -> &'static Kernel {
    let tier = isa.tier();
    match tier.small_kernel() {
        Some(small) if m < tier.small_rows && b.fits(small.tile()) => small,
        _ => packed,
    }
}

fn list(isas: &[Isa]) -> String {
    isas.iter().map(|i| i.name()).collect::<Vec<_>>().join(", ")
}

/// `NO_FORCE`, or the index in `Isa::ALL` of the ISA forced through [`force_isa`].
static FORCED: AtomicU8 = AtomicU8::new(NO_FORCE);
const NO_FORCE: u8 = u8::MAX;

/// Forces the ISA that weights packed from now on use (`None` lifts the forcing).
/// Overrides `QGEMM_ISA`. Weights already packed keep the ISA they were packed for.
///
/// # Errors
/// [`ErrorKind::IsaUnavailable`](crate::ErrorKind::IsaUnavailable) when this CPU
/// cannot run `isa` or this build has no kernel for it; nothing changes then.
pub fn force_isa(isa: Option<Isa>) -> Result<()> {
    match isa {
        Some(isa) => {
            kernel_for(isa)?;
            FORCED.store(isa as u8, Ordering::Relaxed);
        }
        None => FORCED.store(NO_FORCE, Ordering::Relaxed),
    }
    Ok(())
}

/// The ISA that packing uses when none is given: the one forced through
/// [`force_isa`], else the one named by the environment variable `QGEMM_ISA`, else
/// [`detected_isa`].
///
/// # Errors
/// When `QGEMM_ISA` names an unknown ISA or one that cannot run here. The variable is
/// read once per process.
pub fn selected_isa() -> Result<Isa> {
    if let Some(isa) = Isa::from_index(FORCED.load(Ordering::Relaxed)) {
        return Ok(isa);
    }
    static FROM_ENV: OnceLock<Result<Option<Isa>>> = OnceLock::new();
    let from_env = FROM_ENV.get_or_init(|| isa_from_env(std::env::var("QGEMM_ISA").ok().as_deref()));
    match from_env {
        Ok(Some(isa)) => Ok(*isa),
        Ok(None) => Ok(detected_isa()),
        Err(e) => Err(e.clone()),
    }
}

/// Interprets a value of `QGEMM_ISA`: unset or empty means "detect".
pub(crate) fn isa_from_env(value: Option<&str>) -> Result<Option<Isa>> {
    let Some(value) = value.filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    let isa: Isa = value.parse().map_err(|e: Error| Error::new(e.kind(), format!("QGEMM_ISA={value}: {e}")))?;
    kernel_for(isa).map_err(|e| Error::new(e.kind(), format!("QGEMM_ISA={value}: {e}")))?;
    Ok(Some(isa))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn names_round_trip() {
        for &isa in Isa::ALL {
            assert_eq!(isa.name().parse::<Isa>().unwrap(), isa);
            assert_eq!(isa.to_string(), isa.name());
        }
        assert_eq!("AVX2".parse::<Isa>().unwrap(), Isa::Avx2);
        assert_eq!("sse9".parse::<Isa>().unwrap_err().kind(), ErrorKind::UnknownIsa);
    }

    #[test]
    fn env_values() {
        assert_eq!(isa_from_env(None).unwrap(), None);
        assert_eq!(isa_from_env(Some("  ")).unwrap(), None);
        assert_eq!(isa_from_env(Some("portable")).unwrap(), Some(Isa::Portable));
        let e = isa_from_env(Some("bogus")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnknownIsa);
        assert!(e.message().contains("QGEMM_ISA=bogus"), "{e}");
        let missing = Isa::ALL.iter().find(|i| !available_isas().contains(i)).unwrap();
        let e = isa_from_env(Some(missing.name())).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::IsaUnavailable);
        assert!(e.message().contains(missing.name()), "{e}");
    }

    #[test]
    fn isas_are_the_registry_tiers() {
        assert_eq!(Isa::ALL.len(), registry::TIERS.len());
        for (i, &isa) in Isa::ALL.iter().enumerate() {
            assert_eq!(isa as usize, i, "{isa}: its value is its place in Isa::ALL and the registry");
            assert!(std::ptr::eq(isa.tier(), registry::TIERS[i]));
            assert_eq!(isa.required_features(), registry::TIERS[i].features);
            assert_eq!(isa.cpu_supports(), registry::TIERS[i].cpu_supports());
        }
    }

    #[test]
    #[cfg(feature = "capi")]
    fn isas_are_the_c_constants() {
        use crate::ffi::*;
        let c = [
            QGEMM_ISA_PORTABLE,
            QGEMM_ISA_AVX2,
            QGEMM_ISA_AVX_VNNI,
            QGEMM_ISA_AVX512_VNNI,
            QGEMM_ISA_NEON,
            QGEMM_ISA_NEON_DOTPROD,
            QGEMM_ISA_NEON_I8MM,
            QGEMM_ISA_AMX_INT8,
        ];
        assert_eq!(c.len(), Isa::ALL.len());
        for (i, &isa) in Isa::ALL.iter().enumerate() {
            assert_eq!(isa as qgemm_isa, c[i], "{isa}: its C constant");
        }
    }

    #[test]
    fn portable_is_always_available_and_detected_has_the_highest_priority() {
        assert_eq!(available_isas()[0], Isa::Portable);
        let best = available_isas().iter().map(|isa| isa.tier().priority).max();
        assert_eq!(Some(detected_isa().tier().priority), best);
        for &isa in available_isas() {
            assert!(isa.cpu_supports());
            assert!(kernel_for(isa).is_ok());
        }
    }
}
