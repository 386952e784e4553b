//! Argument checks shared by the entry points, and the lowering of a validated
//! [`OutputStage`] to the kernels' borrowed form.

use qgemm_kernels::output::OutView;
use qgemm_kernels::output::{self as k, Param, Rounding, Scheme};
use qgemm_reference::{Channelwise, OutputStage, OutputType, Requantization};

use crate::error::{Result, bail};

/// The number of elements a strided matrix spans: `(rows − 1)·stride + cols`, or 0
/// when it is empty. Checks `stride >= cols` and overflow.
pub(crate) fn matrix_len(what: &str, rows: usize, cols: usize, stride: usize) -> Result<usize> {
    if stride < cols {
        bail!(Stride, "{what}: row stride {stride} is smaller than its {cols} columns");
    }
    if rows == 0 || cols == 0 {
        return Ok(0);
    }
    match (rows - 1).checked_mul(stride).and_then(|x| x.checked_add(cols)) {
        Some(len) => Ok(len),
        None => bail!(Overflow, "{what}: {rows} rows of stride {stride} overflow usize"),
    }
}

/// Checks that a buffer holds a strided `rows × cols` matrix.
pub(crate) fn check_matrix(what: &str, len: usize, rows: usize, cols: usize, stride: usize) -> Result<()> {
    let needed = matrix_len(what, rows, cols, stride)?;
    if len < needed {
        bail!(
            BufferLength,
            "{what}: buffer of {len} elements is too short for {rows}×{cols} with row stride {stride} (needs {needed})"
        );
    }
    Ok(())
}

/// `a · b`, or an overflow error naming `what`.
pub(crate) fn product(what: &str, factors: &[usize]) -> Result<usize> {
    match factors.iter().try_fold(1usize, |acc, &f| acc.checked_mul(f)) {
        Some(p) => Ok(p),
        None => bail!(Overflow, "{what}: the product {factors:?} overflows usize"),
    }
}

/// Checks a per-channel parameter's length against the channel count.
fn check_channels<T>(what: &str, p: &Channelwise<T>, channels: usize) -> Result<()> {
    if let Channelwise::PerChannel(v) = p
        && v.len() != channels
    {
        bail!(BufferLength, "{what}: {} per-channel values for {channels} output channels", v.len());
    }
    Ok(())
}

/// Checks per-channel weight zero points against the column count.
pub(crate) fn check_weight_zero_points(zp: &Channelwise<i8>, channels: usize) -> Result<()> {
    check_channels("weight zero_point", zp, channels)
}

/// Validates an output stage for `channels` output channels and output type `out`,
/// and lowers it to what the kernels take.
pub(crate) fn output_stage<'a>(stage: &'a OutputStage, channels: usize, out: OutputType) -> Result<k::OutputStage<'a>> {
    if let Some(bias) = &stage.bias
        && bias.len() != channels
    {
        bail!(BufferLength, "bias: {} values for {channels} output channels", bias.len());
    }
    match (&stage.dequantize, out) {
        (None, OutputType::F32) => bail!(
            OutputType,
            "output is f32 but the output stage does not dequantize; f32 output needs OutputStage::dequantized"
        ),
        // The dequantization's own parameters: checked here too, so that whatever
        // validates a stage (an operator at creation, say) checks all of it.
        (Some(_), OutputType::F32) => {
            dequant(stage, channels, out)?;
        }
        (None, _) => {}
        (Some(_), _) => bail!(
            OutputType,
            "output is {} but the output stage dequantizes to f32; {} output takes no dequantization",
            out.name(),
            out.name()
        ),
    }
    let requant = match (&stage.requantize, out) {
        (None, OutputType::I32 | OutputType::F32) => None,
        (Some(r), OutputType::U8 | OutputType::I8) => {
            let (lo, hi) = out.range();
            let ty = out.name();
            if !(lo..=hi).contains(&r.zero_point) {
                bail!(ZeroPoint, "requantize.zero_point = {} is outside the {ty} range [{lo}, {hi}]", r.zero_point);
            }
            if r.min > r.max {
                bail!(Clamp, "requantize: min = {} is greater than max = {}", r.min, r.max);
            }
            if r.min < lo || r.max > hi {
                bail!(Clamp, "requantize: clamp [{}, {}] is outside the {ty} range [{lo}, {hi}]", r.min, r.max);
            }
            Some(k::Requant { scheme: scheme(&r.scheme, channels)?, zero_point: r.zero_point, min: r.min, max: r.max })
        }
        (Some(r), _) => bail!(
            OutputType,
            "output is {} but the output stage requantizes ({}); {} output takes no requantization",
            out.name(),
            r.scheme.name(),
            out.name()
        ),
        (None, _) => bail!(
            OutputType,
            "output is {} but the output stage has no requantization; u8 and i8 outputs need one",
            out.name()
        ),
    };
    Ok(k::OutputStage { bias: stage.bias.as_deref(), requant })
}

/// A validated dequantization to f32, applied to each tile of i32 accumulators once
/// the kernel has stored them (in the f32 output's own memory).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dequant<'a> {
    scale: &'a Channelwise<f32>,
    bias: Option<&'a [f32]>,
}

impl Dequant<'_> {
    /// Replaces the i32 accumulators of `out`, a window whose first column is output
    /// channel `first_column`, by their f32 values, stored as the f32's bits:
    /// `f32(acc) · scale + bias`, each operation rounded once (the reference's
    /// `dequantize`; the caller keeps the default floating-point environment).
    pub(crate) fn apply(&self, mut out: OutView<'_, i32>, first_column: usize) {
        let cols = out.cols();
        for r in 0..out.rows() {
            for (j, x) in out.row_mut(r, 0, cols).iter_mut().enumerate() {
                let n = first_column + j;
                let y = *x as f32 * self.scale.at(n);
                let y = match self.bias {
                    Some(b) => y + b[n],
                    None => y,
                };
                *x = y.to_bits() as i32;
            }
        }
    }
}

/// The dequantization of a validated stage (see [`output_stage`]) for f32 output.
pub(crate) fn dequant(stage: &OutputStage, channels: usize, out: OutputType) -> Result<Option<Dequant<'_>>> {
    let Some(d) = stage.dequantize.as_ref().filter(|_| out == OutputType::F32) else {
        return Ok(None);
    };
    check_channels("dequantize.scale", &d.scale, channels)?;
    for (i, &s) in d.scale.values().iter().enumerate() {
        if !s.is_finite() {
            bail!(Scale, "dequantize.scale[{i}] = {s} is not finite");
        }
    }
    if let Some(bias) = &d.bias {
        if bias.len() != channels {
            bail!(BufferLength, "dequantize.bias: {} values for {channels} output channels", bias.len());
        }
        if let Some((i, b)) = bias.iter().enumerate().find(|(_, b)| !b.is_finite()) {
            bail!(Scale, "dequantize.bias[{i}] = {b} is not finite");
        }
    }
    Ok(Some(Dequant { scale: &d.scale, bias: d.bias.as_deref() }))
}

fn param<T: Copy>(p: &Channelwise<T>) -> Param<'_, T> {
    match p {
        Channelwise::PerTensor(v) => Param::Tensor(*v),
        Channelwise::PerChannel(v) => Param::Channel(v),
    }
}

fn scheme(r: &Requantization, channels: usize) -> Result<Scheme<'_>> {
    let rounding = match r {
        Requantization::FixedPoint(_) => Rounding::DoubleTiesAway,
        Requantization::FixedPointHalfUp(_) => Rounding::DoubleHalfUp,
        Requantization::FixedPointSingleRounding(_) => Rounding::Single,
        Requantization::Float { scale } => {
            check_channels("requantize.scale", scale, channels)?;
            for (i, &s) in scale.values().iter().enumerate() {
                if !(s.is_finite() && s > 0.0) {
                    bail!(Scale, "requantize.scale[{i}] = {s} is not finite and positive");
                }
            }
            return Ok(Scheme::Float { scale: param(scale) });
        }
        other => bail!(Unsupported, "requantization scheme {} is not supported by this build", other.name()),
    };
    let p = r.fixed_point_params().expect("a fixed-point scheme");
    check_channels("requantize.multiplier", &p.multiplier, channels)?;
    check_channels("requantize.shift", &p.shift, channels)?;
    for (i, &m) in p.multiplier.values().iter().enumerate() {
        if m != 0 && m < 1 << 30 {
            bail!(Multiplier, "requantize.multiplier[{i}] = {m} is neither 0 nor in [2^30, 2^31)");
        }
    }
    for (i, &s) in p.shift.values().iter().enumerate() {
        if !(-31..=30).contains(&s) {
            bail!(Shift, "requantize.shift[{i}] = {s} is outside [-31, 30]");
        }
    }
    Ok(Scheme::FixedPoint { rounding, multiplier: param(&p.multiplier), shift: param(&p.shift) })
}
