//! The floating-point environment the output stages run in.
//!
//! The Float scheme's arithmetic (`cvtdq2ps`, `mulps`, `cvtps2dq`, the portable
//! tier's `1.5·2^23` rounding, NEON's `fmul`) rounds as the thread's control register
//! says: the x86 MXCSR or the AArch64 FPCR. A caller may have set another rounding
//! mode (down, up, toward zero), flush-to-zero or denormals-are-zero, or unmasked an
//! exception; the contract's bytes are those of round to nearest even. So every
//! thread that runs qgemm's kernels holds a [`DefaultFp`] while it does: it sets the
//! default environment and puts the caller's back when dropped.
//!
//! ```text
//!  x86-64   MXCSR = 0x1F80: every exception masked, round to nearest, no FTZ/DAZ
//!  AArch64  FPCR: RMode = 0 (nearest), FZ and FZ16 clear, exception traps disabled
//! ```
//!
//! Reading the register is one instruction; it is written only when it differs, and
//! only twice per task. On other architectures, and under miri (which has no inline
//! assembly and no rounding modes), the guard does nothing.

/// The default floating-point environment on this thread while it lives; the one
/// found is restored on drop (exception flags raised in between included: they are
/// qgemm's, not the caller's).
#[derive(Debug)]
#[must_use = "the environment is restored when the guard is dropped"]
pub struct DefaultFp {
    saved: Option<usize>,
}

impl DefaultFp {
    /// Sets the default environment on the calling thread, if it is not already.
    #[inline]
    pub fn enter() -> DefaultFp {
        let now = arch::read();
        let want = arch::default_from(now);
        if now == want {
            return DefaultFp { saved: None };
        }
        arch::write(want);
        DefaultFp { saved: Some(now) }
    }
}

impl Drop for DefaultFp {
    #[inline]
    fn drop(&mut self) {
        if let Some(saved) = self.saved {
            arch::write(saved);
        }
    }
}

#[cfg(all(target_arch = "x86_64", not(miri)))]
mod arch {
    use std::arch::asm;

    /// All six exceptions masked, round to nearest, FTZ and DAZ clear, no flags.
    const DEFAULT: u32 = 0x1f80;
    /// The exception flags (bits 0–5), which do not change any result.
    const FLAGS: u32 = 0x3f;

    pub(super) fn read() -> usize {
        let mut csr = 0u32;
        // SAFETY: `stmxcsr` stores the 4-byte MXCSR at the address given, a local
        // u32; SSE is part of x86-64.
        unsafe { asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack, preserves_flags)) };
        csr as usize
    }

    pub(super) fn default_from(now: usize) -> usize {
        (DEFAULT | (now as u32 & FLAGS)) as usize
    }

    pub(super) fn write(csr: usize) {
        let csr = csr as u32;
        // SAFETY: `ldmxcsr` loads MXCSR from a local u32 whose reserved bits are 0
        // (a value read from MXCSR, or the default); it is a barrier for the compiler
        // (memory may change), so no float operation is moved across it.
        unsafe { asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack, preserves_flags)) };
    }
}

#[cfg(all(target_arch = "aarch64", not(miri)))]
mod arch {
    use std::arch::asm;

    /// RMode (bits 22–23), FZ (24), FZ16 (19), and the trap enables IOE, DZE, OFE,
    /// UFE, IXE (8–12) and IDE (15).
    const CLEAR: usize = 0b11 << 22 | 1 << 24 | 1 << 19 | 0b1_1111 << 8 | 1 << 15;

    pub(super) fn read() -> usize {
        let fpcr: usize;
        // SAFETY: reading FPCR has no effect; FP/SIMD is part of AArch64.
        unsafe { asm!("mrs {}, fpcr", out(reg) fpcr, options(nomem, nostack, preserves_flags)) };
        fpcr
    }

    pub(super) fn default_from(now: usize) -> usize {
        now & !CLEAR
    }

    pub(super) fn write(fpcr: usize) {
        // SAFETY: writes back a value read from FPCR with some of its control bits
        // cleared (or the value read); a barrier for the compiler, as on x86-64.
        unsafe { asm!("msr fpcr, {}", in(reg) fpcr, options(nostack, preserves_flags)) };
    }
}

#[cfg(any(miri, not(any(target_arch = "x86_64", target_arch = "aarch64"))))]
mod arch {
    pub(super) fn read() -> usize {
        0
    }

    pub(super) fn default_from(now: usize) -> usize {
        now
    }

    pub(super) fn write(_: usize) {}
}
