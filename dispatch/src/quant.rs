//! Pack-time helpers that turn float quantization parameters into the integers the
//! output stage takes, exactly as the runtimes they imitate do.

use crate::error::{Result, bail};

use qgemm_kernels::fpenv::DefaultFp;

/// The f32 requantization scale as ONNX Runtime derives it:
/// `f32(f32(a_scale · w_scale) / y_scale)`, each operation rounded to nearest even
/// whatever the calling thread's floating-point environment (as every helper here).
pub fn onnx_float_scale(a_scale: f32, w_scale: f32, y_scale: f32) -> f32 {
    let _fp = DefaultFp::enter();
    qgemm_reference::onnx_float_scale(a_scale, w_scale, y_scale)
}

/// The real multiplier TFLite derives for [`quantize_multiplier`]:
/// `double(input_scale) · double(weight_scale) / double(output_scale)`, rounded to
/// nearest even whatever the calling thread's floating-point environment.
pub fn tflite_real_multiplier(input_scale: f32, weight_scale: f32, output_scale: f32) -> f64 {
    let _fp = DefaultFp::enter();
    qgemm_reference::tflite_real_multiplier(input_scale, weight_scale, output_scale)
}

/// TFLite's `QuantizeMultiplier`: `real ≈ multiplier · 2^(shift − 31)`, with the
/// multiplier 0 or in `[2^30, 2^31)`. Feed it [`tflite_real_multiplier`] to reproduce
/// TFLite's parameters byte for byte.
///
/// `frexp`, then the significand times 2^31 rounded half away from zero, a carry to
/// 2^31 renormalized, and shifts below −31 flushed to `(0, 0)`.
///
/// # Errors
/// [`Scale`](crate::ErrorKind::Scale) for a negative, NaN or infinite `real`;
/// [`Shift`](crate::ErrorKind::Shift) when `real >= 2^30`, whose shift would exceed 30.
pub fn quantize_multiplier(real: f64) -> Result<(i32, i32)> {
    if !(real.is_finite() && real >= 0.0) {
        bail!(Scale, "real multiplier {real} is not finite and non-negative");
    }
    let (multiplier, shift) = {
        let _fp = DefaultFp::enter();
        qgemm_reference::quantize_multiplier(real)
    };
    if shift > 30 {
        bail!(Shift, "real multiplier {real} needs shift {shift}, above the largest accepted (30)");
    }
    Ok((multiplier, shift))
}

/// Quantizes a float bias to i32 with scale `a_scale · w_scale`, rounded as PyTorch's
/// `quantize_per_tensor(.., qint32)` does: `bias · (1 / f32(a_scale · w_scale))` in f32,
/// rounded half to even, saturated to the i32 range.
///
/// # Errors
/// [`Scale`](crate::ErrorKind::Scale) when `bias` is not finite or a scale is not
/// finite and positive (or their product is not).
pub fn quantize_bias(bias: f32, a_scale: f32, w_scale: f32) -> Result<i32> {
    if !bias.is_finite() {
        bail!(Scale, "bias {bias} is not finite");
    }
    for (name, s) in [("a_scale", a_scale), ("w_scale", w_scale)] {
        if !(s.is_finite() && s > 0.0) {
            bail!(Scale, "{name} = {s} is not finite and positive");
        }
    }
    let _fp = DefaultFp::enter();
    let product = a_scale * w_scale;
    if !(product.is_finite() && product > 0.0) {
        bail!(Scale, "a_scale · w_scale = {product} is not finite and positive");
    }
    Ok(qgemm_reference::quantize_bias(bias, a_scale, w_scale))
}
