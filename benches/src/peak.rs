//! This machine's peak for exact 8-bit multiply-accumulate, measured with a small
//! loop of the ISA's multiply-accumulate instructions that never touches memory.
//!
//! Each kernel's percentage of peak is relative to the probe of the instructions it
//! can use: the portable kernel's best multiversioned clone and the exact AVX2 kernel
//! use AVX2's `vpmaddwd` + `vpaddd` (two i16 products summed into an i32, then
//! accumulated); the AVX2 fast path on 7-bit data uses `vpmaddubsw` + `vpmaddwd` +
//! `vpaddd`; the VNNI tiers use `vpdpbusd` on their own width (ymm for AVX-VNNI, zmm
//! for AVX-512 VNNI), one instruction per 4 MACs per lane; the AMX tier uses
//! `tdpbusd` on tiles (16 × 16 × 64 MACs per instruction).

use std::time::Instant;

use qgemm::Isa;

/// A measured peak.
#[derive(Clone, Copy, Debug)]
pub struct Peak {
    /// What was measured, e.g. `avx2 vpmaddwd+vpaddd`.
    pub probe: &'static str,
    /// Single-thread operations per second, in GOPS (2 ops per multiply-accumulate).
    pub gops: f64,
}

/// The single-thread peak relevant to `isa` on `data`, measured now (about 0.1 s).
///
/// AVX2 on 7-bit data runs its `vpmaddubsw` fast path, so it compares against that
/// probe; everything else, and any ISA that has no probe of its own yet, compares
/// against the host's best exact widening MAC.
pub fn measure(isa: Isa, data: crate::DataKind) -> Peak {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 && data == crate::DataKind::SevenBit && Isa::Avx2.cpu_supports() {
        return best_of("avx2 vpmaddubsw+vpmaddwd+vpaddd", x86::AVX2_MADDUBS_MACS_PER_ITER, |iters| {
            // SAFETY: AVX2 was detected (`cpu_supports`) just above.
            unsafe { x86::avx2_maddubs_loop(iters) }
        });
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::AvxVnni && isa.cpu_supports() {
        return best_of("avx-vnni vpdpbusd ymm", x86::DPBUSD_CHAINS as u64 * 32, |iters| {
            // SAFETY: AVX-VNNI and AVX2 were detected (`cpu_supports`) just above.
            unsafe { x86::avx_vnni_loop(iters) }
        });
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni && isa.cpu_supports() {
        return best_of("avx512-vnni vpdpbusd zmm", x86::DPBUSD_CHAINS as u64 * 64, |iters| {
            // SAFETY: AVX-512 F and VNNI were detected (`cpu_supports`) just above.
            unsafe { x86::avx512_vnni_loop(iters) }
        });
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::AmxInt8 && isa.cpu_supports() {
        return best_of("amx-int8 tdpbusd", x86::AMX_MACS_PER_ITER, |iters| {
            // SAFETY: AMX-TILE and AMX-INT8 were detected, with the OS's permission
            // (`cpu_supports`), just above.
            unsafe { x86::amx_loop(iters) }
        });
    }
    let _ = (isa, data);
    host_widening_mac()
}

/// The probe of [`measure`] on `threads` threads at once (started together), in GOPS
/// summed over the threads: the machine's own ceiling for thread scaling.
pub fn measure_threads(isa: Isa, data: crate::DataKind, threads: usize) -> f64 {
    let start = std::sync::Barrier::new(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    measure(isa, data).gops
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("the probe does not panic")).sum()
    })
}

fn host_widening_mac() -> Peak {
    #[cfg(target_arch = "x86_64")]
    {
        if Isa::Avx2.cpu_supports() {
            return best_of("avx2 vpmaddwd+vpaddd", x86::AVX2_MACS_PER_ITER, |iters| {
                // SAFETY: AVX2 was detected (`cpu_supports`) just above.
                unsafe { x86::avx2_madd_loop(iters) }
            });
        }
        best_of("sse2 pmaddwd+paddd", x86::SSE2_MACS_PER_ITER, x86::sse2_madd_loop)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        best_of("scalar i32 multiply-add", portable::MACS_PER_ITER, portable::mac_loop)
    }
}

/// Runs `probe(iters)` (which performs `macs_per_iter` MACs per iteration) a few
/// times and keeps the fastest rate: the peak is what the core can do when nothing
/// else interferes.
fn best_of(probe: &'static str, macs_per_iter: u64, run: impl Fn(u64) -> u64) -> Peak {
    let iters = 2_000_000;
    std::hint::black_box(run(iters / 10));
    let mut best = 0.0f64;
    for _ in 0..5 {
        let start = Instant::now();
        std::hint::black_box(run(iters));
        let secs = start.elapsed().as_secs_f64();
        best = best.max((iters * macs_per_iter) as f64 / secs);
    }
    Peak { probe, gops: 2.0 * best / 1e9 }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::asm;

    use std::arch::x86_64::*;

    /// MACs per iteration of [`amx_loop`]: four `tdpbusd` of 16 × 16 × 64.
    pub const AMX_MACS_PER_ITER: u64 = 4 * 16 * 16 * 64;

    /// `iters` rounds of four independent `tdpbusd` (tmm0..3 += tmm4/5 · tmm6/7) on
    /// zeroed tiles, in the tile registers; configured and released here.
    ///
    /// # Safety
    /// The CPU must support AMX-TILE and AMX-INT8 and the OS must have granted this
    /// process the tile state (what `Isa::AmxInt8.cpu_supports()` checks).
    pub unsafe fn amx_loop(iters: u64) -> u64 {
        // `ldtilecfg`'s operand: palette 1, tiles 0..8 of 16 rows × 64 bytes (the
        // kernel's own configuration).
        let config = qgemm_kernels::amx::TileConfig::FULL;
        if iters == 0 {
            return 0;
        }
        // SAFETY: the caller's contract (the instructions and the tile state are
        // available); `ldtilecfg` reads the 64 bytes of `config`; the loop counts
        // `iters ≥ 1` down to 0; the tiles are released before the block ends.
        unsafe {
            asm!(
                "ldtilecfg [{config}]",
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                "tilezero tmm4",
                "tilezero tmm5",
                "tilezero tmm6",
                "tilezero tmm7",
                "2:",
                "tdpbusd tmm0, tmm4, tmm6",
                "tdpbusd tmm1, tmm4, tmm7",
                "tdpbusd tmm2, tmm5, tmm6",
                "tdpbusd tmm3, tmm5, tmm7",
                "dec {n}",
                "jnz 2b",
                "tilerelease",
                config = in(reg) &config,
                n = inout(reg) iters => _,
                options(nostack),
            );
        }
        iters
    }

    /// Independent `vpdpbusd` chains per iteration of the VNNI probes: enough to cover
    /// its latency (about 5 cycles) on two ports.
    pub const DPBUSD_CHAINS: usize = 12;

    /// `iters` rounds of [`DPBUSD_CHAINS`] independent `vpdpbusd` on zmm, in registers.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F and VNNI.
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub unsafe fn avx512_vnni_loop(iters: u64) -> u64 {
        let x = _mm512_set1_epi8(std::hint::black_box(3));
        let mut acc = [_mm512_setzero_si512(); DPBUSD_CHAINS];
        for _ in 0..iters {
            for a in &mut acc {
                *a = _mm512_dpbusd_epi32(*a, x, x);
            }
        }
        let sum = acc.iter().fold(_mm512_setzero_si512(), |s, &a| _mm512_add_epi32(s, a));
        std::hint::black_box(sum);
        iters
    }

    /// As [`avx512_vnni_loop`], with the VEX `vpdpbusd` on ymm.
    ///
    /// # Safety
    /// The CPU must support AVX2 and AVX-VNNI.
    #[target_feature(enable = "avx2,avxvnni")]
    pub unsafe fn avx_vnni_loop(iters: u64) -> u64 {
        let x = _mm256_set1_epi8(std::hint::black_box(3));
        let mut acc = [_mm256_setzero_si256(); DPBUSD_CHAINS];
        for _ in 0..iters {
            for a in &mut acc {
                *a = _mm256_dpbusd_avx_epi32(*a, x, x);
            }
        }
        let sum = acc.iter().fold(_mm256_setzero_si256(), |s, &a| _mm256_add_epi32(s, a));
        std::hint::black_box(sum);
        iters
    }

    /// Six independent accumulator chains of 16 i16 pairs each.
    pub const AVX2_MACS_PER_ITER: u64 = 6 * 16;
    /// Six chains of 8 i16 pairs each.
    pub const SSE2_MACS_PER_ITER: u64 = 6 * 8;

    /// `iters` rounds of six independent `vpmaddwd` + `vpaddd` pairs, in registers.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn avx2_madd_loop(iters: u64) -> u64 {
        let mut n = iters;
        // SAFETY: register-only arithmetic and a counted loop; AVX2 is enabled for this
        // function and the caller guarantees the CPU has it.
        unsafe {
            asm!(
                "vpcmpeqw ymm14, ymm14, ymm14",
                "vpsrlw ymm14, ymm14, 9",
                "vpxor ymm0, ymm0, ymm0", "vpxor ymm1, ymm1, ymm1", "vpxor ymm2, ymm2, ymm2",
                "vpxor ymm3, ymm3, ymm3", "vpxor ymm4, ymm4, ymm4", "vpxor ymm5, ymm5, ymm5",
                "2:",
                "vpmaddwd ymm6, ymm14, ymm14", "vpaddd ymm0, ymm0, ymm6",
                "vpmaddwd ymm7, ymm14, ymm14", "vpaddd ymm1, ymm1, ymm7",
                "vpmaddwd ymm8, ymm14, ymm14", "vpaddd ymm2, ymm2, ymm8",
                "vpmaddwd ymm9, ymm14, ymm14", "vpaddd ymm3, ymm3, ymm9",
                "vpmaddwd ymm10, ymm14, ymm14", "vpaddd ymm4, ymm4, ymm10",
                "vpmaddwd ymm11, ymm14, ymm14", "vpaddd ymm5, ymm5, ymm11",
                "dec {n}",
                "jnz 2b",
                "vzeroupper",
                n = inout(reg) n,
                out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _, out("ymm4") _, out("ymm5") _,
                out("ymm6") _, out("ymm7") _, out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
                out("ymm14") _,
                options(nomem, nostack),
            );
        }
        iters - n
    }

    /// Six chains of 16 u8·i8 pairs each.
    pub const AVX2_MADDUBS_MACS_PER_ITER: u64 = 6 * 32;

    /// `iters` rounds of six independent `vpmaddubsw` + `vpmaddwd` (by ones) + `vpaddd`
    /// chains: the AVX2 fast path, exact only when pair sums fit in i16.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn avx2_maddubs_loop(iters: u64) -> u64 {
        let mut n = iters;
        // SAFETY: register-only arithmetic and a counted loop; AVX2 is enabled for this
        // function and the caller guarantees the CPU has it.
        unsafe {
            asm!(
                "vpcmpeqw ymm14, ymm14, ymm14",
                "vpsrlw ymm15, ymm14, 15",
                "vpsrlw ymm14, ymm14, 9",
                "vpxor ymm0, ymm0, ymm0", "vpxor ymm1, ymm1, ymm1", "vpxor ymm2, ymm2, ymm2",
                "vpxor ymm3, ymm3, ymm3", "vpxor ymm4, ymm4, ymm4", "vpxor ymm5, ymm5, ymm5",
                "2:",
                "vpmaddubsw ymm6, ymm14, ymm14", "vpmaddwd ymm6, ymm6, ymm15", "vpaddd ymm0, ymm0, ymm6",
                "vpmaddubsw ymm7, ymm14, ymm14", "vpmaddwd ymm7, ymm7, ymm15", "vpaddd ymm1, ymm1, ymm7",
                "vpmaddubsw ymm8, ymm14, ymm14", "vpmaddwd ymm8, ymm8, ymm15", "vpaddd ymm2, ymm2, ymm8",
                "vpmaddubsw ymm9, ymm14, ymm14", "vpmaddwd ymm9, ymm9, ymm15", "vpaddd ymm3, ymm3, ymm9",
                "vpmaddubsw ymm10, ymm14, ymm14", "vpmaddwd ymm10, ymm10, ymm15", "vpaddd ymm4, ymm4, ymm10",
                "vpmaddubsw ymm11, ymm14, ymm14", "vpmaddwd ymm11, ymm11, ymm15", "vpaddd ymm5, ymm5, ymm11",
                "dec {n}",
                "jnz 2b",
                "vzeroupper",
                n = inout(reg) n,
                out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _, out("ymm4") _, out("ymm5") _,
                out("ymm6") _, out("ymm7") _, out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
                out("ymm14") _, out("ymm15") _,
                options(nomem, nostack),
            );
        }
        iters - n
    }

    /// The SSE2 version of [`avx2_madd_loop`] (SSE2 is part of x86-64).
    pub fn sse2_madd_loop(iters: u64) -> u64 {
        let mut n = iters;
        // SAFETY: register-only SSE2 arithmetic, which every x86-64 CPU has.
        unsafe {
            asm!(
                "pcmpeqw xmm14, xmm14",
                "psrlw xmm14, 9",
                "pxor xmm0, xmm0", "pxor xmm1, xmm1", "pxor xmm2, xmm2",
                "pxor xmm3, xmm3", "pxor xmm4, xmm4", "pxor xmm5, xmm5",
                "2:",
                "movdqa xmm6, xmm14", "pmaddwd xmm6, xmm14", "paddd xmm0, xmm6",
                "movdqa xmm7, xmm14", "pmaddwd xmm7, xmm14", "paddd xmm1, xmm7",
                "movdqa xmm8, xmm14", "pmaddwd xmm8, xmm14", "paddd xmm2, xmm8",
                "movdqa xmm9, xmm14", "pmaddwd xmm9, xmm14", "paddd xmm3, xmm9",
                "movdqa xmm10, xmm14", "pmaddwd xmm10, xmm14", "paddd xmm4, xmm10",
                "movdqa xmm11, xmm14", "pmaddwd xmm11, xmm14", "paddd xmm5, xmm11",
                "dec {n}",
                "jnz 2b",
                n = inout(reg) n,
                out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _, out("xmm4") _, out("xmm5") _,
                out("xmm6") _, out("xmm7") _, out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm11") _,
                out("xmm14") _,
                options(nomem, nostack),
            );
        }
        iters - n
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod portable {
    /// Sixteen independent multiply-adds per iteration.
    pub const MACS_PER_ITER: u64 = 16;

    /// A plain-Rust multiply-add loop the compiler can vectorize; a stand-in until the
    /// architecture's kernels bring a probe of their instructions.
    pub fn mac_loop(iters: u64) -> u64 {
        let mut acc = [0i32; 16];
        let x: [i32; 16] = std::hint::black_box([3; 16]);
        for _ in 0..iters {
            for (a, &v) in acc.iter_mut().zip(&x) {
                *a = a.wrapping_add(v * v);
            }
            acc = std::hint::black_box(acc);
        }
        acc.iter().map(|&a| a as u64).sum::<u64>().min(iters)
    }
}

/// Single-thread read bandwidth in GB/s, streaming a buffer of `bytes` (best of a few
/// passes). With weights larger than the caches a GEMV reads each i8 weight once per
/// call for one multiply-accumulate: its ceiling is 2 ops per byte at this rate.
pub fn read_bandwidth(bytes: usize) -> f64 {
    let buf: Vec<u64> = (0..bytes / 8).map(|i| i as u64).collect();
    let mut best = f64::INFINITY;
    for _ in 0..8 {
        let start = Instant::now();
        // Four independent sums so that the loop is bound by loads, not by one chain.
        let sums = buf.chunks_exact(4).fold([0u64; 4], |s, c| {
            [s[0].wrapping_add(c[0]), s[1].wrapping_add(c[1]), s[2].wrapping_add(c[2]), s[3].wrapping_add(c[3])]
        });
        std::hint::black_box(sums);
        best = best.min(start.elapsed().as_secs_f64());
    }
    (buf.len() * 8) as f64 / best / 1e9
}
