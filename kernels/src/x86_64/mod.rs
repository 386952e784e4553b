//! x86-64 kernels, one module per instruction set.

pub mod avx2;
pub mod avx2_dwconv;
mod avx2_epilogue;
