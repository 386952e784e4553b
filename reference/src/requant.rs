//! Requantization, one function per scheme, written in the most literal form: 64-bit
//! intermediates wherever the published definition needs more than 32 bits.

use crate::types::{OutputType, Requantization, Requantize};
use std::hint::black_box;

/// gemmlowp's `SaturatingRoundingDoublingHighMul`: the high 32 bits of `2·a·b`,
/// rounded to nearest with ties away from zero. `i32::MIN · i32::MIN` saturates to
/// `i32::MAX`.
pub fn saturating_rounding_doubling_high_mul(a: i32, b: i32) -> i32 {
    if a == i32::MIN && b == i32::MIN {
        return i32::MAX;
    }
    let ab = i64::from(a) * i64::from(b);
    let nudge: i64 = if ab >= 0 { 1 << 30 } else { 1 - (1 << 30) };
    // Rust's `/` on integers truncates toward zero, as C's does.
    let high = (ab + nudge) / (1i64 << 31);
    i32::try_from(high).expect("|a·b| < 2^62 once MIN·MIN is excluded")
}

/// gemmlowp's `RoundingDivideByPOT`: `x / 2^exponent`, rounded to nearest with ties
/// away from zero. `exponent` is in `[0, 31]`.
pub fn rounding_divide_by_pot(x: i32, exponent: u32) -> i32 {
    assert!(exponent <= 31, "exponent {exponent} out of [0, 31]");
    if exponent == 0 {
        return x;
    }
    let half = 1i64 << (exponent - 1);
    let magnitude = (i64::from(x).abs() + half) >> exponent;
    let q = if x < 0 { -magnitude } else { magnitude };
    i32::try_from(q).expect("a quotient is no larger than its dividend")
}

/// Scheme (a), `FixedPoint`: TFLite's `MultiplyByQuantizedMultiplier` (reference
/// kernels, gemmlowp). `x·2^l` with wrapping, `l = max(shift, 0)`; then the saturating
/// rounding doubling high multiply; then a rounding divide by `2^r`,
/// `r = max(−shift, 0)`, ties away from zero.
pub fn fixed_point(x: i32, multiplier: i32, shift: i32) -> i32 {
    check_fixed_point(multiplier, shift);
    let left = shift.max(0) as u32;
    let right = (-shift).max(0) as u32;
    let y = saturating_rounding_doubling_high_mul(x.wrapping_shl(left), multiplier);
    rounding_divide_by_pot(y, right)
}

/// Scheme (b), `FixedPointHalfUp`: TFLite's optimized x86 kernels (ruy). As
/// [`fixed_point`], but the final shift is `(y + 2^(r−1)) >> r`: ties toward +∞. The
/// addition is exact (64-bit).
pub fn fixed_point_half_up(x: i32, multiplier: i32, shift: i32) -> i32 {
    check_fixed_point(multiplier, shift);
    let left = shift.max(0) as u32;
    let right = (-shift).max(0) as u32;
    let y = saturating_rounding_doubling_high_mul(x.wrapping_shl(left), multiplier);
    if right == 0 {
        return y;
    }
    let rounded = (i64::from(y) + (1i64 << (right - 1))) >> right;
    i32::try_from(rounded).expect("a right shift by at least 1 of y + 2^(r-1) fits i32")
}

/// Scheme (c), `FixedPointSingleRounding`: TFLite with `TFLITE_SINGLE_ROUNDING`.
/// `(x·m + 2^(t−1)) >> t` in 64 bits with `t = 31 − shift`: one rounding, ties toward
/// +∞. The result can exceed i32 when `shift > 0`; it is returned exactly.
pub fn fixed_point_single_rounding(x: i32, multiplier: i32, shift: i32) -> i64 {
    check_fixed_point(multiplier, shift);
    let total_shift = (31 - shift) as u32; // in [1, 62]
    let product = i64::from(x) * i64::from(multiplier); // |product| < 2^62
    (product + (1i64 << (total_shift - 1))) >> total_shift
}

/// Scheme (d), `Float` (ONNX Runtime, PyTorch, XNNPACK), including the zero point and
/// clamp, whose order it fixes: `acc` converted to f32 (round to nearest even), one
/// f32 multiply by `scale` (no FMA, no f64), clamped to `[min − zp, max − zp]`,
/// rounded half to even, plus `zp`.
///
/// Every rounding here is to nearest even whatever the calling thread's floating-point
/// environment says (an x86 MXCSR or AArch64 FPCR rounding mode, flush-to-zero,
/// denormals-are-zero): the conversion and the product are rounded by [`f32_nearest`]
/// on integers, from the exact product in f64, and the last rounding is
/// `round_ties_even`, whose mode is fixed.
pub fn float(acc: i32, scale: f32, zero_point: i32, min: i32, max: i32) -> i32 {
    let accf = f32_nearest(f64::from(acc));
    // Exact: two 24-bit significands make at most 48 bits, and the exponents of two
    // f32 stay far inside f64's normal range.
    let product = f32_nearest(f64::from(accf) * f64::from(scale));
    let low = f32_nearest(f64::from(min - zero_point));
    let high = f32_nearest(f64::from(max - zero_point));
    // `max`/`min` rather than `clamp` so that an infinite product clamps too.
    let clamped = product.max(low).min(high);
    round_ties_even(clamped) + zero_point
}

/// `x` rounded to the nearest integer, ties to even, for `|x| < 2^31`, with operations
/// that are exact (so the same in any floating-point environment): the truncation, and
/// the difference of `x` and its truncation. (`f32::round_ties_even` may be a library
/// routine that adds and subtracts 2^23, which rounds as the environment says.)
fn round_ties_even(x: f32) -> i32 {
    let whole = x as i32; // truncates toward zero, whatever the rounding mode
    // Exact: x and its integer part share an exponent range, or x is an integer.
    let rest = x - whole as f32;
    let away = if x < 0.0 { -1 } else { 1 };
    if rest.abs() > 0.5 || (rest.abs() == 0.5 && whole % 2 != 0) { whole + away } else { whole }
}

/// `a + b` rounded to f32, ties to even, whatever the calling thread's floating-point
/// environment: the exact sum of the two (integers at the smaller operand's scale) when
/// their scales are within 2^28 of each other, rounded by [`f32_nearest`]; otherwise
/// the larger operand, which is then the f32 nearest to the sum (the smaller is below
/// a quarter of its unit in the last place). Infinities add as IEEE 754 says (exactly).
pub fn f32_add_nearest(a: f32, b: f32) -> f32 {
    // Everything on the bits, hidden from the optimizer: with denormals-are-zero,
    // `x == 0.0` holds for a subnormal `x`, and LLVM, which assumes the default
    // environment, may turn a test of the bits into that comparison.
    let (bits_a, bits_b) = (black_box(a.to_bits()), black_box(b.to_bits()));
    let finite = |bits: u32| bits & 0x7f80_0000 != 0x7f80_0000;
    let zero = |bits: u32| bits & 0x7fff_ffff == 0;
    if !finite(bits_a) || !finite(bits_b) {
        return a + b; // exact: an infinity (or NaN) whatever the rounding
    }
    if zero(bits_a) && zero(bits_b) {
        // Round to nearest: −0 only for −0 + −0.
        return f32::from_bits(bits_a & bits_b & 0x8000_0000);
    }
    if zero(bits_b) {
        return a;
    }
    if zero(bits_a) {
        return b;
    }
    // ±m · 2^e with m < 2^24: a normal value has its implicit bit, a subnormal e = −149.
    let parts = |bits: u32| -> (i64, i32) {
        let exponent = ((bits >> 23) & 0xff) as i32;
        let fraction = i64::from(bits & 0x7f_ffff);
        let (m, e) = if exponent == 0 { (fraction, -149) } else { (fraction | 1 << 23, exponent - 150) };
        (if bits >> 31 == 1 { -m } else { m }, e)
    };
    let ((ma, ea), (mb, eb)) = (parts(bits_a), parts(bits_b));
    if ea > eb + 28 {
        return a;
    }
    if eb > ea + 28 {
        return b;
    }
    let e = ea.min(eb);
    // Below 2^53 in magnitude: exact as an f64, as is its product by 2^e.
    let sum = (ma << (ea - e)) + (mb << (eb - e));
    if sum == 0 {
        return 0.0;
    }
    let scale = f64::from_bits(((e + 1023) as u64) << 52);
    f32_nearest(sum as f64 * scale)
}

/// The f32 output of a dequantizing stage for one accumulator of output channel
/// `channel`: `f32(acc)`, times `scale`, plus `bias` where there is one, each step one
/// f32 operation rounded to nearest even (no FMA), whatever the floating-point
/// environment.
pub fn dequantize(acc: i32, scale: f32, bias: Option<f32>) -> f32 {
    let accf = f32_nearest(f64::from(acc));
    // Exact in f64, as in `float`; widened on the bits, since the conversion
    // instruction reads a subnormal scale as zero under denormals-are-zero.
    let product = f32_nearest(widen(accf) * widen(scale));
    match bias {
        Some(b) => f32_add_nearest(product, b),
        None => product,
    }
}

/// `x` as an f64, exactly, from its bits (whatever the floating-point environment).
fn widen(x: f32) -> f64 {
    // Hidden from the optimizer, which would turn this back into the conversion.
    let bits = black_box(x.to_bits());
    let sign = u64::from(bits >> 31) << 63;
    let exponent = u64::from((bits >> 23) & 0xff);
    let fraction = u64::from(bits & 0x7f_ffff);
    let magnitude = match exponent {
        0 if fraction == 0 => 0,
        // fraction · 2^−149 with its top bit at `top`: normal in f64.
        0 => {
            let top = 63 - u64::from(fraction.leading_zeros());
            (top + 1023 - 149) << 52 | (fraction << (52 - top)) & ((1 << 52) - 1)
        }
        0xff => 0x7ff << 52 | fraction << 29,
        e => (e + 1023 - 127) << 52 | fraction << 29,
    };
    f64::from_bits(sign | magnitude)
}

/// `x` rounded to f32, ties to even, on the bits of `x`: the same result under any
/// rounding mode and flush-to-zero setting of the floating-point environment (the
/// `as` conversion follows them). Overflow gives an infinity, as the conversion does
/// in the default environment; infinities and NaN convert as they are.
pub fn f32_nearest(x: f64) -> f32 {
    if x == 0.0 || !x.is_finite() {
        return x as f32; // exact: no rounding involved
    }
    let bits = x.to_bits();
    let negative = bits >> 63 == 1;
    let exponent = ((bits >> 52) & 0x7ff) as i32;
    let fraction = bits & ((1 << 52) - 1);
    // x = ±m · 2^e, m < 2^53.
    let (m, e) = if exponent == 0 { (fraction, -1074) } else { (fraction | 1 << 52, exponent - 1075) };
    // The f32 unit in the last place at x: 24 significant bits, or the subnormal step.
    let top = e + 63 - m.leading_zeros() as i32;
    let ulp = (top - 23).max(-149);
    let drop = ulp - e;
    let q = if drop <= 0 {
        m << -drop // fewer than 24 significant bits: exact
    } else if drop >= 64 {
        0 // below half the smallest subnormal
    } else {
        let (q, rest, half) = (m >> drop, m & ((1 << drop) - 1), 1u64 << (drop - 1));
        if rest > half || (rest == half && q & 1 == 1) { q + 1 } else { q }
    };
    // q · 2^ulp with q ≤ 2^24: its f32 bits are `(ulp + 149) · 2^23 + q`, for normal
    // and subnormal results alike (a carry to 2^24 moves into the exponent).
    let magnitude = ((ulp + 149) as u64) * (1 << 23) + q;
    let magnitude = magnitude.min(0x7f80_0000) as u32; // past f32::MAX: infinity
    f32::from_bits(magnitude | u32::from(negative) << 31)
}

/// The full requantization of one biased accumulator for output channel `channel`:
/// the scheme, plus the zero point, clamped to `[min, max]`. The addition of the zero
/// point cannot overflow: it is done on the exact result.
pub fn requantize(acc: i32, r: &Requantize, channel: usize) -> i32 {
    let scaled: i64 = match &r.scheme {
        Requantization::FixedPoint(p) => i64::from(fixed_point(acc, p.multiplier.at(channel), p.shift.at(channel))),
        Requantization::FixedPointHalfUp(p) => {
            i64::from(fixed_point_half_up(acc, p.multiplier.at(channel), p.shift.at(channel)))
        }
        Requantization::FixedPointSingleRounding(p) => {
            fixed_point_single_rounding(acc, p.multiplier.at(channel), p.shift.at(channel))
        }
        Requantization::Float { scale } => {
            return float(acc, scale.at(channel), r.zero_point, r.min, r.max);
        }
    };
    let shifted = scaled + i64::from(r.zero_point);
    let clamped = shifted.clamp(i64::from(r.min), i64::from(r.max));
    i32::try_from(clamped).expect("min and max are i32")
}

/// Asserts the documented ranges of a fixed-point multiplier and shift.
fn check_fixed_point(multiplier: i32, shift: i32) {
    assert!(multiplier == 0 || multiplier >= 1 << 30, "multiplier {multiplier} is neither 0 nor in [2^30, 2^31)");
    assert!((-31..=30).contains(&shift), "shift {shift} out of [-31, 30]");
}

/// Asserts that a requantization's zero point and clamp fit the output type.
pub(crate) fn check_requantize(r: &Requantize, out: OutputType) {
    let (lo, hi) = out.range();
    assert!(out != OutputType::I32, "requantization needs a u8 or i8 output");
    assert!((lo..=hi).contains(&r.zero_point), "zero point out of range");
    assert!(lo <= r.min && r.min <= r.max && r.max <= hi, "bad clamp");
}

/// TFLite's `QuantizeMultiplier`: a real multiplier as a Q31 significand and a
/// power-of-two shift, `real ≈ m · 2^(shift − 31)`.
///
/// `frexp`, then `round(q · 2^31)` with ties away from zero; a significand that rounds
/// up to `2^31` is halved with the shift incremented; a shift below −31 gives `(0, 0)`.
/// Zero gives `(0, 0)`. Multipliers of `2^30` or more give shifts above 30, which the
/// output stage does not accept.
///
/// # Panics
/// If `real` is negative, NaN or infinite.
pub fn quantize_multiplier(real: f64) -> (i32, i32) {
    assert!(real.is_finite() && real >= 0.0, "multiplier {real} is not finite and ≥ 0");
    if real == 0.0 {
        return (0, 0);
    }
    let (q, mut shift) = frexp(real);
    // q in [0.5, 1): q·2^31 is exact, and `round` rounds half away from zero.
    let mut q_fixed = (q * (1u64 << 31) as f64).round() as i64;
    if q_fixed == 1 << 31 {
        q_fixed /= 2;
        shift += 1;
    }
    if shift < -31 {
        shift = 0;
        q_fixed = 0;
    }
    (i32::try_from(q_fixed).expect("q_fixed < 2^31"), shift)
}

/// C's `frexp` for finite positive `x`: `(q, e)` with `x = q·2^e` and `q` in `[0.5, 1)`.
fn frexp(x: f64) -> (f64, i32) {
    const EXPONENT_MASK: u64 = 0x7ff << 52;
    let bits = x.to_bits();
    let biased = ((bits & EXPONENT_MASK) >> 52) as i32;
    if biased == 0 {
        // Subnormal: scale into the normal range first.
        let (q, e) = frexp(x * 2f64.powi(64));
        return (q, e - 64);
    }
    // Keep the sign and mantissa, and set the exponent so that the value is in [0.5, 1).
    let q = f64::from_bits((bits & !EXPONENT_MASK) | (1022 << 52));
    (q, biased - 1022)
}

/// The real multiplier TFLite passes to [`quantize_multiplier`] for a convolution or
/// fully-connected layer: `double(input_scale) · double(weight_scale) /
/// double(output_scale)`. A multiplier derived in f32 gives different bytes.
pub fn tflite_real_multiplier(input_scale: f32, weight_scale: f32, output_scale: f32) -> f64 {
    f64::from(input_scale) * f64::from(weight_scale) / f64::from(output_scale)
}

/// The f32 requantization scale as ONNX Runtime derives it:
/// `f32(f32(a_scale · w_scale) / y_scale)`. Other orders of the same operations give
/// different bytes.
pub fn onnx_float_scale(a_scale: f32, w_scale: f32, y_scale: f32) -> f32 {
    let product = a_scale * w_scale;
    product / y_scale
}

/// A float bias quantized to i32 with scale `a_scale · w_scale` (PyTorch keeps bias in
/// float), rounded as PyTorch's `quantize_per_tensor(.., qint32)` rounds: the scale is
/// the f32 product `a_scale · w_scale`, the bias is multiplied in f32 by the f32
/// reciprocal `1 / scale`, rounded half to even and saturated to the i32 range.
/// (Dividing by the scale instead, as some ONNX exporters do, can differ by one.)
///
/// # Panics
/// If `bias` is not finite or the product of the scales is not finite and positive.
pub fn quantize_bias(bias: f32, a_scale: f32, w_scale: f32) -> i32 {
    let scale = a_scale * w_scale;
    assert!(bias.is_finite(), "bias {bias} is not finite");
    assert!(scale.is_finite() && scale > 0.0, "scale {scale} is not finite and positive");
    let inverse = 1.0f32 / scale;
    // `as` saturates out-of-range floats (and maps an infinite product to MIN/MAX).
    (bias * inverse).round_ties_even() as i32
}
