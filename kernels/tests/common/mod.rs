//! What the kernel-level tests share.

use qgemm_kernels::{Kernel, portable};

/// xorshift64*: deterministic data without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    #[allow(dead_code)] // not every test file draws bounded values
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Every GEMM kernel this CPU runs, with its own blocking (those with a fast path also
/// without it), and the AMX tier's loop nest on the scalar model of the tiles
/// (`32x32c4-amx-model`), which runs everywhere: natively, that is; under miri, where
/// each of its `tdpbusd` costs seconds, `amx_model.rs` runs it on one product instead.
#[allow(dead_code)] // not every test file runs every kernel
pub fn gemm_kernels() -> Vec<Kernel> {
    #[allow(unused_mut)]
    let mut kernels = vec![*portable::kernel()];
    if !cfg!(miri) {
        kernels.push(*qgemm_kernels::amx::model_kernel());
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(avx2) = qgemm_kernels::x86_64::avx2::kernel() {
        kernels.extend([*avx2, avx2.without_fast_path()]);
    }
    #[cfg(target_arch = "x86_64")]
    {
        use qgemm_kernels::x86_64::{avx_vnni, avx512_vnni};
        kernels.extend(avx_vnni::kernel().copied());
        kernels.extend(avx512_vnni::kernel().copied());
        kernels.extend(avx512_vnni::wide_kernel().copied());
        kernels.extend(avx512_vnni::narrow_kernel().copied());
        kernels.extend(qgemm_kernels::x86_64::amx_int8::kernel().copied());
    }
    #[cfg(target_arch = "aarch64")]
    {
        use qgemm_kernels::aarch64::{neon, neon_dotprod, neon_i8mm};
        if let Some(neon) = neon::kernel() {
            kernels.extend([*neon, neon.without_fast_path()]);
        }
        kernels.extend(neon_dotprod::kernel().copied());
        kernels.extend(neon_i8mm::kernel().copied());
    }
    kernels
}
