//! # qgemm-kernels
//!
//! The machinery behind the `qgemm` crate: packing formats, the blocked loop nest and
//! the microkernels, one module per ISA. It is an internal crate: its functions assume
//! parameters that `qgemm` has already validated, and panic (never write out of
//! bounds) when they are not.
//!
//! | module | kernel | runs on |
//! |---|---|---|
//! | [`portable`] | `4x32c2-portable` | every CPU (multiversioned for AVX2, SSE4.1, NEON) |
//! | `x86_64::avx2` | `6x8c4-avx2-madd`, fast path `6x8c4-avx2-maddubs` | x86-64 with AVX2 |
//! | `x86_64::avx_vnni` | `6x16c4-avxvnni` | x86-64 with AVX2 and AVX-VNNI |
//! | `x86_64::avx512_vnni` | `8x48c4-avx512vnni`, `6x64c4-avx512vnni` for N in 64s, `8x32c4-avx512vnni` for AMX's small products | x86-64 with AVX-512 F/BW/VL/VNNI |
//! | `x86_64::amx_int8` | `32x32c4-amx-int8` (A in groups of 64; the loop nest of [`amx`] through `asm!`) | x86-64 with AMX-TILE/AMX-INT8, the OS's permission, and AVX-512 VNNI |
//! | [`amx`] | `32x32c4-amx-model`: the same loop nest on a scalar model of the tiles, for tests | every CPU |
//! | `aarch64::neon` | `4x4c16-neon-mull`, fast path `4x4c16-neon-mlal` | AArch64 (ARMv8.0 NEON) |
//! | `aarch64::neon_dotprod` | `8x8c4-neon-sdot` | AArch64 with the dot-product extension |
//! | `aarch64::neon_i8mm` | `8x8c8-neon-usmmla` | AArch64 with the int8 matrix-multiply extension |
//! | [`dwconv`] | `dw8c2-portable` (depthwise convolution) | every CPU |
//! | `x86_64::avx2_dwconv` | `dw8c2-avx2-madd` (depthwise convolution) | x86-64 with AVX2 |
//! | `x86_64::avx512_dwconv` | `dw16c2-avx512-vnni` (depthwise convolution) | x86-64 with AVX-512 F/BW/VL/VNNI and AVX2 |
//!
//! [`rows`] feeds the loop nest its rows of A: a matrix, or a convolution's taps
//! gathered while packing. [`indirect`] runs a convolution without either: the kernels
//! that can (the `Dot4` x86 ones) read its input in place through offsets.
//!
//! Each ISA module hands out its [`Kernel`] through a function that detects the CPU
//! features first, so holding a `Kernel` proves it can run.

#![warn(missing_docs)]

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
pub mod amx;
pub mod driver;
pub mod dwconv;
pub mod fpenv;
pub mod indirect;
pub mod kernel;
pub mod output;
pub mod pack;
pub mod portable;
pub mod registry;
pub mod rows;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

pub use kernel::{Blocking, IndirectA, IndirectArgs, Kernel, Tile};
