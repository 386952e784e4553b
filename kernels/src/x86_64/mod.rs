//! x86-64 kernels, one module per instruction set.

pub mod amx_int8;
pub mod avx2;
pub mod avx2_dwconv;
mod avx2_epilogue;
mod avx2_fused;
pub mod avx512_dwconv;
mod avx512_epilogue;
pub mod avx512_vnni;
pub mod avx_vnni;
mod columns;
mod decode_avx512;
mod dot4_tile;
mod pack_avx2;
