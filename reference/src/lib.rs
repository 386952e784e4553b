//! # qgemm-reference: the scalar oracle
//!
//! Plain, obviously-correct Rust for everything qgemm computes. Every kernel of qgemm
//! must equal these functions **bit for bit, for every input**; the test harness, the
//! throughput study and the fuzzers all compare against them. There is no blocking,
//! no packing and no `unsafe` here, and no dependency: the oracle shares no arithmetic
//! with what it checks. (It does share the parameter *types*, which `qgemm`
//! re-exports.)
//!
//! The functions assume valid parameters and panic otherwise; validation with clear
//! errors is the public crate's job.
//!
//! ```
//! use qgemm_reference::{Channelwise, GemmProblem, OutputData, OutputStage, OutputType, WeightLayout, gemm};
//!
//! let a = [130u8, 126]; // 1×2 with zero point 128: (2, −2)
//! let b = [3i8, 5]; // 2×1 with zero point 1: (2, 4)
//! let problem = GemmProblem {
//!     m: 1,
//!     n: 1,
//!     k: 2,
//!     a: &a,
//!     a_row_stride: 2,
//!     a_zero_point: 128,
//!     b: &b,
//!     b_layout: WeightLayout::KxN,
//!     b_zero_point: &Channelwise::PerTensor(1),
//! };
//! // 2·2 + (−2)·4 = −4
//! assert_eq!(gemm(&problem, &OutputStage::default(), OutputType::I32), OutputData::I32(vec![-4]));
//! // TFLite's multiplier for 0.25: 2^30 (one half in Q31) with shift −1.
//! assert_eq!(qgemm_reference::quantize_multiplier(0.25), (1 << 30, -1));
//! ```
//!
//! ## Semantics (the contract)
//!
//! ### 1. GEMM
//! A is M×K u8, row-major with row stride ≥ K, with activation zero point
//! `a_zp: u8`. B (the weights) is K×N i8, stored K×N or N×K row-major
//! ([`WeightLayout`]), with weight zero point `b_zp: i8` per tensor or per output
//! column. The accumulator is
//!
//! ```text
//! acc[m][n] = Σ_k (A[m][k] − a_zp) · (B[k][n] − b_zp[n])
//! ```
//!
//! in i32 with two's-complement wrapping. Each product fits in 17 bits; only the sum
//! wraps, so results are defined for any K and the zero-point algebra that fast
//! kernels use (`Σ A·B − b_zp·ΣA − a_zp·ΣB + K·a_zp·b_zp`) is exact modulo 2^32.
//!
//! ### 2. Output stage
//! First an optional i32 bias per column, added with wrapping. Then either the raw i32
//! value is stored, or it is requantized to u8 or i8: one of the four schemes below
//! (each with per-tensor or per-channel parameters), then `+ zp`, then a clamp to
//! `[min, max]`. ReLU is `min = zp`; ReLU6 and any other clamp are set through
//! `min`/`max`.
//!
//! * (a) [`FixedPoint`](Requantization::FixedPoint) — TFLite's reference kernels and
//!   gemmlowp (`MultiplyByQuantizedMultiplier`): `x·2^l` with wrapping,
//!   `l = max(shift, 0)`; then `SaturatingRoundingDoublingHighMul` with the multiplier
//!   (`INT32_MIN·INT32_MIN` gives `INT32_MAX`, otherwise
//!   `(ab + (ab ≥ 0 ? 2^30 : 1 − 2^30)) / 2^31` with truncating division); then
//!   `RoundingDivideByPOT` by `r = max(−shift, 0)`, ties away from zero.
//! * (b) [`FixedPointHalfUp`](Requantization::FixedPointHalfUp) — TFLite's optimized x86
//!   kernels (ruy): the same high multiply, then `(y + 2^(r−1)) >> r`, ties toward +∞.
//! * (c) [`FixedPointSingleRounding`](Requantization::FixedPointSingleRounding) —
//!   TFLite with `TFLITE_SINGLE_ROUNDING`, CMSIS-NN's option:
//!   `((i64)x·m + 2^(t−1)) >> t` with `t = 31 − shift`: one rounding, ties toward +∞.
//! * (d) [`Float`](Requantization::Float) — ONNX Runtime, PyTorch, XNNPACK:
//!   `(acc as f32, round to nearest even) · scale` as one f32 multiply (no FMA, no
//!   f64), clamped to `[min − zp, max − zp]`, rounded half to even, plus `zp`. Every
//!   rounding is to nearest even whatever floating-point environment the calling
//!   thread has (rounding mode, flush-to-zero): the reference rounds on integers
//!   ([`f32_nearest`]), and `qgemm` sets the default environment around its kernels.
//!
//! For (a)–(c) the multiplier is 0 or in `[2^30, 2^31)` and the shift in `[−31, 30]`;
//! the zero point is then added to the exact result (no overflow is possible: (c) may
//! exceed i32 before the clamp) and the sum clamped to `[min, max]`. For (d) the scale
//! is finite and positive.
//!
//! Helpers: [`quantize_multiplier`] is TFLite's `QuantizeMultiplier`;
//! [`tflite_real_multiplier`] is the f64 product TFLite feeds it; [`onnx_float_scale`]
//! is ONNX Runtime's f32 scale; [`quantize_bias`] quantizes a float bias. These compute
//! in the calling thread's floating-point environment (their divisions round as it
//! says); `qgemm`'s helpers of the same names set the default one first.
//!
//! ### 3. Conv2d
//! NHWC u8 input `[N, H, W, C]` with a zero point; OHWI i8 weights
//! `[OC, KH, KW, C/groups]` with per-tensor or per-OC zero points; NHWC output
//! `[N, OH, OW, OC]` through the same output stage (per output channel). Stride,
//! dilation, padding (top, left, bottom, right) and groups (depthwise included). A
//! padded tap reads as the input zero point, so it contributes exactly zero.
//! `OH = (H + pad_top + pad_bottom − dilation·(KH − 1) − 1) / stride + 1`, defined only
//! when the dilated kernel fits in the padded input.
//!
//! ### 4. 4-bit weights
//! int4 ([−8, 7]) or uint4 ([0, 15]) weights, two per byte, are the i8 weights that
//! [`unpack_nibbles`] makes of them, with their zero point (int4's in [−8, 7], uint4's
//! in [0, 15]): the GEMM and conv contracts above apply as they are. `W − b_zp` then
//! lies in [−15, 15].

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod conv;
mod gemm;
mod nibbles;
mod requant;
mod types;

pub use conv::{Conv2dProblem, conv2d, conv2d_accumulators};
pub use gemm::{GemmProblem, apply_output_stage, gemm, gemm_accumulators};
pub use nibbles::unpack_nibbles;
pub use requant::{
    dequantize, f32_add_nearest, f32_nearest, fixed_point, fixed_point_half_up, fixed_point_single_rounding, float,
    onnx_float_scale, quantize_bias, quantize_multiplier, requantize, rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul, tflite_real_multiplier,
};
pub use types::{
    Channelwise, Conv2dParams, Dequantize, FixedPointParams, OutputData, OutputStage, OutputType, QuantizedElement,
    Requantization, Requantize, WeightLayout,
};
