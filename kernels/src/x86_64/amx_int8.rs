//! AMX-INT8: `32x32c4-amx-int8`, the loop nest of [`crate::amx`] on the tile
//! registers, through `asm!` (Rust's AMX intrinsics are unstable): `ldtilecfg`,
//! `tilezero`, `tileloadd`, `tdpbusd`, `tilestored`, `tilerelease`. `tdpbusd` adds its
//! products with wrap-around, as the reference's i32 sums do, so the tier is exact
//! for every input, like AVX-512 VNNI's `vpdpbusd` whose arithmetic it shares.
//!
//! The output stage is AVX-512's epilogue, run on each 32 × 32 tile's sums while they
//! are in a 4 KiB buffer. A rows are packed in groups of 64 (the portable packer: a
//! 64-byte copy per group; row sums with AVX2), B in the usual `c4` layout with panels
//! of 32 columns.
//!
//! ## Availability
//!
//! The tier runs where the CPU has AMX-TILE and AMX-INT8 (cpuid leaf 7), the OS
//! saves the tile state (XCR0 bits 17 and 18, behind OSXSAVE) and, on Linux, grants
//! this process the tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM,
//! XFEATURE_XTILEDATA)`, asked once). Anything else (another OS, a kernel older than
//! 5.16, a refusal) makes it unavailable: never a fault. The tier also needs
//! AVX-512 F/BW/VL/VNNI and AVX2 (its epilogue, and the VNNI kernel that takes the
//! small products); every AMX CPU has them.

use std::arch::asm;

use crate::amx::{self, Elem, Stage, TileConfig, TileOps, tile_fits};
use crate::kernel::{AFormat, BlockArgs, Kernel};
use crate::output::EpilogueArgs;

/// The registry's `amx-tile`: the CPU has AMX-TILE, the OS saves the tile state and
/// lets this process use it (asked once; see the module documentation).
pub(crate) fn tiles_usable() -> bool {
    static USABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *USABLE.get_or_init(|| leaf7_edx_bit(24) && os_saves_tiles() && permission_granted())
}

/// The registry's `amx-int8`: the CPU has `tdpbusd` and its siblings.
pub(crate) fn has_amx_int8() -> bool {
    leaf7_edx_bit(25)
}

/// cpuid leaf 7, subleaf 0, EDX bit `bit` (24: AMX-TILE, 25: AMX-INT8).
fn leaf7_edx_bit(bit: u32) -> bool {
    if cfg!(miri) {
        return false; // miri runs no cpuid
    }
    // Leaf 7 exists where the highest leaf is at least 7.
    cpuid(0, 0).eax >= 7 && (cpuid(7, 0).edx >> bit) & 1 == 1
}

/// `cpuid` of `leaf` and `sub`: an unsafe function in older Rust (1.89, the MSRV,
/// included), a safe one in newer; the block compiles on both.
#[allow(unused_unsafe)]
fn cpuid(leaf: u32, sub: u32) -> std::arch::x86_64::CpuidResult {
    // SAFETY: cpuid exists on every x86-64 CPU; a leaf past the highest reads as
    // another leaf's data, never a fault (the callers check the highest leaf first).
    unsafe { std::arch::x86_64::__cpuid_count(leaf, sub) }
}

/// OSXSAVE (cpuid leaf 1, ECX bit 27), then XCR0's XTILECFG and XTILEDATA bits.
fn os_saves_tiles() -> bool {
    let osxsave = (cpuid(1, 0).ecx >> 27) & 1 == 1;
    if !osxsave {
        return false;
    }
    let xcr0: u64;
    // SAFETY: `xgetbv` with ECX = 0 is defined wherever OSXSAVE is set (just checked);
    // it only reads XCR0 into EDX:EAX.
    unsafe {
        let (lo, hi): (u32, u32);
        asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags));
        xcr0 = u64::from(hi) << 32 | u64::from(lo);
    }
    (xcr0 >> 17) & 0b11 == 0b11
}

/// Linux grants the tile data state per process: `arch_prctl(ARCH_REQ_XCOMP_PERM,
/// XFEATURE_XTILEDATA)` returns 0 once granted (and again on every later request).
#[cfg(target_os = "linux")]
fn permission_granted() -> bool {
    const SYS_ARCH_PRCTL: usize = 158;
    const ARCH_REQ_XCOMP_PERM: usize = 0x1023;
    const XFEATURE_XTILEDATA: usize = 18;
    let ret: isize;
    // The x86-64 Linux system call convention: number in RAX, arguments in RDI and
    // RSI, result in RAX, RCX and R11 clobbered. An older kernel answers -EINVAL.
    // SAFETY: `arch_prctl` with this code only changes the process's permitted XSAVE
    // features; it touches no memory of ours.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

/// Elsewhere the tier is not offered: how each OS grants the state is not handled.
#[cfg(not(target_os = "linux"))]
fn permission_granted() -> bool {
    false
}

/// The tile registers, through `asm!`. Made only inside this tier's kernel entry
/// points, which run after detection; released when dropped (also on unwinding).
struct Tiles {
    config: TileConfig,
}

impl Drop for Tiles {
    fn drop(&mut self) {
        self.release();
    }
}

impl Tiles {
    /// Panics unless tile `t` as configured lies within `len` values of `E`.
    fn check<E: Elem>(&self, t: u8, len: usize, stride: usize) {
        let t = usize::from(t);
        let (rows, colsb) = (usize::from(self.config.rows[t]), usize::from(self.config.colsb[t]));
        assert!(t < 8 && rows > 0 && tile_fits::<E>(len, rows, colsb, stride), "tile access past the slice");
    }
}

impl TileOps for Tiles {
    fn configure(&mut self, config: &TileConfig) {
        self.config = *config;
        // SAFETY: the tier is available (AMX-TILE detected and granted, see
        // `tiles_usable`); `ldtilecfg` reads the 64 bytes of `config`.
        unsafe { asm!("ldtilecfg [{}]", in(reg) config, options(nostack, readonly, preserves_flags)) };
    }

    fn zero<const T: u8>(&mut self) {
        // SAFETY: as in `configure`; the tile is configured (`configure` comes first).
        unsafe { asm!("tilezero tmm{t}", t = const T, options(nomem, nostack, preserves_flags)) };
    }

    fn load<const T: u8, E: Elem>(&mut self, src: &[E], stride: usize) {
        self.check::<E>(T, src.len(), stride);
        let bytes = stride * E::BYTES;
        // SAFETY: as in `zero`; the configured rows and bytes, `bytes` apart, lie within
        // `src` (checked just above).
        unsafe {
            asm!(
                "tileloadd tmm{t}, [{p} + {s} * 1]",
                t = const T,
                p = in(reg) src.as_ptr(),
                s = in(reg) bytes,
                options(nostack, readonly, preserves_flags),
            )
        };
    }

    fn dot<const C: u8, const A: u8, const B: u8>(&mut self) {
        // SAFETY: as in `zero` (AMX-INT8 detected too); the loop nest configures the
        // three tiles with the shapes `tdpbusd` requires.
        unsafe {
            asm!(
                "tdpbusd tmm{c}, tmm{a}, tmm{b}",
                c = const C,
                a = const A,
                b = const B,
                options(nomem, nostack, preserves_flags),
            )
        };
    }

    fn store<const T: u8, E: Elem>(&mut self, dst: &mut [E], stride: usize) {
        self.check::<E>(T, dst.len(), stride);
        let bytes = stride * E::BYTES;
        // SAFETY: as in `load`, for `dst`, which this borrow makes ours to write.
        unsafe {
            asm!(
                "tilestored [{p} + {s} * 1], tmm{t}",
                t = const T,
                p = in(reg) dst.as_mut_ptr(),
                s = in(reg) bytes,
                options(nostack, preserves_flags),
            )
        };
    }

    fn release(&mut self) {
        // SAFETY: as in `configure`; `tilerelease` returns the tile state to its
        // initial, unconfigured form.
        unsafe { asm!("tilerelease", options(nomem, nostack, preserves_flags)) };
    }
}

/// # Safety
/// The CPU must run the tier (see [`kernel`]).
unsafe fn block(args: BlockArgs<'_>) {
    let mut tiles = Tiles { config: TileConfig::FULL };
    // SAFETY: no stage.
    unsafe { amx::block(&mut tiles, args, None, None) }
}

/// # Safety
/// As [`block`].
unsafe fn nibble_block(args: BlockArgs<'_>) {
    let mut tiles = Tiles { config: TileConfig::FULL };
    // SAFETY: no stage; the tier requires AVX-512 F/BW, what the decoder runs on.
    unsafe { amx::block(&mut tiles, args, None, Some(super::decode_avx512::decode_pairs)) }
}

/// # Safety
/// As [`block`].
unsafe fn nibble_block_staged(args: BlockArgs<'_>, mut stage: EpilogueArgs<'_>) {
    let mut tiles = Tiles { config: TileConfig::FULL };
    let stage = Stage { args: &mut stage, epilogue };
    // SAFETY: the tier requires AVX-512 F/BW/VL and AVX2, what the epilogue and the
    // decoder run on.
    unsafe { amx::block(&mut tiles, args, Some(stage), Some(super::decode_avx512::decode_pairs)) }
}

/// # Safety
/// As [`block`].
unsafe fn block_staged(args: BlockArgs<'_>, mut stage: EpilogueArgs<'_>) {
    let mut tiles = Tiles { config: TileConfig::FULL };
    let stage = Stage { args: &mut stage, epilogue };
    // SAFETY: the tier requires AVX-512 F/BW/VL and AVX2, what the epilogue runs on.
    unsafe { amx::block(&mut tiles, args, Some(stage), None) }
}

/// # Safety
/// As [`block`].
unsafe fn epilogue(args: EpilogueArgs<'_>) {
    // SAFETY: the tier requires AVX-512 F/BW/VL and AVX2.
    unsafe { super::avx512_epilogue::epilogue(args) }
}

// Private: handed out only by `kernel()`, after detection.
static KERNEL: Kernel = {
    // SAFETY: the entry points touch memory only through the slices they get (checked
    // by `Kernel::block`/`epilogue` and by each tile access), and run only after
    // `kernel()` detected the tier (AMX, its OS permission, AVX-512 and AVX2).
    unsafe {
        Kernel::new("32x32c4-amx-int8", amx::TILE, amx::BLOCKING, block, epilogue)
            .with_a_packing(crate::pack::packer(amx::KA, AFormat::U8), super::pack_avx2::row_sum)
            .with_nibble_decoder(super::decode_avx512::decode_pairs)
            .with_strip_bytes(amx::STRIP_BYTES)
            .with_nibble_block(nibble_block, Some(nibble_block_staged))
            .with_nibble_block_rows(amx::NIBBLE_BLOCK_ROWS)
            .with_staged_block(block_staged)
    }
};

/// The kernel (`32x32c4`), or `None` where the tier does not run (see the module
/// documentation).
pub fn kernel() -> Option<&'static Kernel> {
    if crate::registry::AMX_INT8.cpu_supports() { Some(&KERNEL) } else { None }
}
