//! Pack-time helpers that turn float quantization parameters into the integers the
//! output stage takes, exactly as the runtimes they imitate do.

use qgemm_reference::{Channelwise, FixedPointParams, QuantizedElement, Requantization, Requantize};

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

/// One value per channel from `scales` (1 value: per tensor), checked finite and
/// positive, each mapped by `f`.
fn per_channel<T: Copy>(what: &str, scales: &[f32], mut f: impl FnMut(f32) -> Result<T>) -> Result<Channelwise<T>> {
    if scales.is_empty() {
        bail!(Dimension, "{what}: no scales (one per tensor, or one per output channel)");
    }
    let mut values = Vec::with_capacity(scales.len());
    for (i, &s) in scales.iter().enumerate() {
        if !(s.is_finite() && s > 0.0) {
            bail!(Scale, "{what}[{i}] = {s} is not finite and positive");
        }
        values.push(f(s)?);
    }
    Ok(match values.as_slice() {
        [one] => Channelwise::PerTensor(*one),
        _ => Channelwise::PerChannel(values),
    })
}

/// Checks a scale that is not per channel.
fn positive(what: &str, s: f32) -> Result<()> {
    if !(s.is_finite() && s > 0.0) {
        bail!(Scale, "{what} = {s} is not finite and positive");
    }
    Ok(())
}

/// The output stage's requantization from the f32 scales ONNX Runtime and PyTorch
/// hold: the Float scheme with [`onnx_float_scale`]`(a_scale, w_scales[n], y_scale)`
/// per output channel (`w_scales` has one value per tensor, or N), and the output
/// zero point, whose type (`u8` or `i8`) is the output's. The clamp is that type's
/// whole range; narrow it with [`Requantize::with_relu`] or
/// [`Requantize::with_clamp`].
///
/// ```
/// # use qgemm::{Requantization, onnx_requantize};
/// let r = onnx_requantize(0.02, &[0.005, 0.01], 0.05, 128u8)?.with_relu();
/// assert_eq!((r.zero_point, r.min, r.max), (128, 128, 255));
/// assert!(matches!(r.scheme, Requantization::Float { .. }));
/// # Ok::<(), qgemm::Error>(())
/// ```
///
/// # Errors
/// [`Scale`](crate::ErrorKind::Scale) for a scale that is not finite and positive;
/// [`Dimension`](crate::ErrorKind::Dimension) for no weight scales.
pub fn onnx_requantize<Q: QuantizedElement>(
    a_scale: f32,
    w_scales: &[f32],
    y_scale: f32,
    zero_point: Q,
) -> Result<Requantize> {
    positive("a_scale", a_scale)?;
    positive("y_scale", y_scale)?;
    let scale = per_channel("w_scales", w_scales, |w| Ok(onnx_float_scale(a_scale, w, y_scale)))?;
    Ok(Requantize::new(Requantization::Float { scale }, zero_point))
}

/// The output stage's requantization as TFLite derives it from its scales: per
/// output channel, [`quantize_multiplier`]`(`[`tflite_real_multiplier`]`(input_scale,
/// weight_scales[n], output_scale))`, with TFLite's reference rounding
/// ([`Requantization::FixedPoint`]; put the same [`FixedPointParams`] in
/// `FixedPointHalfUp` or `FixedPointSingleRounding` for TFLite's other builds).
///
/// # Errors
/// As [`onnx_requantize`], and [`Shift`](crate::ErrorKind::Shift) for a real
/// multiplier of 2^30 or more.
pub fn tflite_requantize<Q: QuantizedElement>(
    input_scale: f32,
    weight_scales: &[f32],
    output_scale: f32,
    zero_point: Q,
) -> Result<Requantize> {
    positive("input_scale", input_scale)?;
    positive("output_scale", output_scale)?;
    let pairs = per_channel("weight_scales", weight_scales, |w| {
        quantize_multiplier(tflite_real_multiplier(input_scale, w, output_scale))
    })?;
    let (multiplier, shift) = match pairs {
        Channelwise::PerTensor((m, s)) => (Channelwise::PerTensor(m), Channelwise::PerTensor(s)),
        Channelwise::PerChannel(v) => (
            Channelwise::PerChannel(v.iter().map(|p| p.0).collect()),
            Channelwise::PerChannel(v.iter().map(|p| p.1).collect()),
        ),
    };
    Ok(Requantize::new(Requantization::FixedPoint(FixedPointParams::new(multiplier, shift)), zero_point))
}

/// A float bias vector quantized with [`quantize_bias`]: `bias[n]` with scale
/// `a_scale · w_scales[n]` (`w_scales` has one value per tensor, or one per value of
/// `bias`).
///
/// # Errors
/// As [`quantize_bias`], naming the element; [`Dimension`](crate::ErrorKind::Dimension)
/// when `w_scales` has neither 1 value nor `bias.len()`.
pub fn quantize_biases(bias: &[f32], a_scale: f32, w_scales: &[f32]) -> Result<Vec<i32>> {
    if w_scales.len() != 1 && w_scales.len() != bias.len() {
        bail!(
            Dimension,
            "w_scales has {} values for {} biases (needs 1 or {})",
            w_scales.len(),
            bias.len(),
            bias.len()
        );
    }
    bias.iter()
        .enumerate()
        .map(|(n, &b)| {
            let w = w_scales[if w_scales.len() == 1 { 0 } else { n }];
            quantize_bias(b, a_scale, w).map_err(|e| crate::Error::new(e.kind(), format!("bias[{n}]: {e}")))
        })
        .collect()
}
