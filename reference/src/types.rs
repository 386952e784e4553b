//! The data that describes a problem. These types are shared with the public crate
//! `qgemm`, which re-exports them, so that the oracle and the product read the same
//! parameters; the *arithmetic* on them is never shared.

/// How the weight matrix B (K×N, i8) is laid out in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightLayout {
    /// K rows of N weights: `B[k][n]` is at `k * n_total + n`.
    KxN,
    /// N rows of K weights, the PyTorch/ONNX linear-weight layout (and OHWI conv
    /// weights): `B[k][n]` is at `n * k_total + k`.
    NxK,
}

/// A parameter given once for the whole tensor or once per output channel (column).
#[derive(Clone, Debug, PartialEq)]
pub enum Channelwise<T> {
    /// One value for every output channel.
    PerTensor(T),
    /// One value per output channel; its length must equal the channel count.
    PerChannel(Vec<T>),
}

impl<T: Copy> Channelwise<T> {
    /// The value that applies to output channel `channel`.
    ///
    /// # Panics
    /// For `PerChannel`, if `channel` is out of range.
    pub fn at(&self, channel: usize) -> T {
        match self {
            Channelwise::PerTensor(v) => *v,
            Channelwise::PerChannel(v) => v[channel],
        }
    }

    /// The number of values, or `None` for a per-tensor value.
    pub fn channels(&self) -> Option<usize> {
        match self {
            Channelwise::PerTensor(_) => None,
            Channelwise::PerChannel(v) => Some(v.len()),
        }
    }

    /// Every value, in channel order (one value for `PerTensor`).
    pub fn values(&self) -> &[T] {
        match self {
            Channelwise::PerTensor(v) => std::slice::from_ref(v),
            Channelwise::PerChannel(v) => v,
        }
    }
}

/// One value for the whole tensor: `Channelwise::from(0.5)` is `PerTensor(0.5)`.
impl<T> From<T> for Channelwise<T> {
    fn from(value: T) -> Self {
        Channelwise::PerTensor(value)
    }
}

/// One value per channel: `Channelwise::from(vec![…])` is `PerChannel(…)`.
impl<T> From<Vec<T>> for Channelwise<T> {
    fn from(values: Vec<T>) -> Self {
        Channelwise::PerChannel(values)
    }
}

/// One value per channel, copied from a slice.
impl<T: Clone> From<&[T]> for Channelwise<T> {
    fn from(values: &[T]) -> Self {
        Channelwise::PerChannel(values.to_vec())
    }
}

/// A TFLite-style fixed-point multiplier: the real multiplier is
/// `multiplier · 2^(shift − 31)`.
///
/// `multiplier` is 0 or in `[2^30, 2^31)`; `shift` is in `[-31, 30]`.
/// [`quantize_multiplier`](crate::quantize_multiplier) produces them from a real number.
/// Build one with [`FixedPointParams::new`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct FixedPointParams {
    /// The Q31 significand.
    pub multiplier: Channelwise<i32>,
    /// The power-of-two exponent: positive shifts left, negative right.
    pub shift: Channelwise<i32>,
}

impl FixedPointParams {
    /// Multipliers and shifts, each per tensor (`i32`) or per channel (`Vec<i32>`).
    pub fn new(multiplier: impl Into<Channelwise<i32>>, shift: impl Into<Channelwise<i32>>) -> Self {
        FixedPointParams { multiplier: multiplier.into(), shift: shift.into() }
    }
}

/// How an i32 accumulator becomes an 8-bit value. Each scheme reproduces one runtime
/// byte for byte; see the crate documentation for the formulas, which are the contract.
///
/// Non-exhaustive: later versions may add schemes.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Requantization {
    /// TFLite's reference kernels and gemmlowp: saturating rounding doubling high
    /// multiply, then a rounding right shift with ties away from zero.
    FixedPoint(FixedPointParams),
    /// TFLite's optimized x86 kernels (ruy): the same high multiply, then a rounding
    /// right shift with ties toward +∞.
    FixedPointHalfUp(FixedPointParams),
    /// TFLite built with `TFLITE_SINGLE_ROUNDING`, and CMSIS-NN's option: one 64-bit
    /// multiply and one rounding, ties toward +∞.
    FixedPointSingleRounding(FixedPointParams),
    /// ONNX Runtime, PyTorch and XNNPACK: one f32 multiply, round half to even.
    Float {
        /// The f32 multiplier, finite and positive.
        scale: Channelwise<f32>,
    },
}

impl Requantization {
    /// [`Requantization::Float`] with a scale per tensor (`f32`) or per channel
    /// (`Vec<f32>`).
    pub fn float(scale: impl Into<Channelwise<f32>>) -> Self {
        Requantization::Float { scale: scale.into() }
    }

    /// The scheme's name, as the documentation and error messages spell it.
    pub fn name(&self) -> &'static str {
        match self {
            Requantization::FixedPoint(_) => "FixedPoint",
            Requantization::FixedPointHalfUp(_) => "FixedPointHalfUp",
            Requantization::FixedPointSingleRounding(_) => "FixedPointSingleRounding",
            Requantization::Float { .. } => "Float",
        }
    }

    /// The fixed-point parameters, for the three fixed-point schemes.
    pub fn fixed_point_params(&self) -> Option<&FixedPointParams> {
        match self {
            Requantization::FixedPoint(p)
            | Requantization::FixedPointHalfUp(p)
            | Requantization::FixedPointSingleRounding(p) => Some(p),
            Requantization::Float { .. } => None,
        }
    }
}

/// Requantization to an 8-bit output: the scheme, then `+ zero_point`, then a clamp to
/// `[min, max]`. ReLU is `min = zero_point`; ReLU6 and other activations are set
/// through `min` and `max`.
///
/// Build one for the output's element type, so that its zero point has that type, as
/// every zero point in the API does: [`Requantize::u8`] or [`Requantize::i8`] (the
/// clamp is then the type's whole range), then [`with_clamp`](Requantize::with_clamp)
/// or [`with_relu`](Requantize::with_relu). The fields hold the values widened to
/// `i32`, for reading.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Requantize {
    /// The scheme and its parameters.
    pub scheme: Requantization,
    /// The output zero point, in the output type's range.
    pub zero_point: i32,
    /// The lower clamp, in the output type's range.
    pub min: i32,
    /// The upper clamp, in the output type's range, `>= min`.
    pub max: i32,
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for u8 {}
    impl Sealed for i8 {}
}

/// The 8-bit element types a requantized output can have, `u8` and `i8` (sealed). A
/// zero point of one of them says which output a [`Requantize`] is for.
pub trait QuantizedElement: Copy + Into<i32> + sealed::Sealed {
    /// The output type of this element.
    const OUTPUT_TYPE: OutputType;
}

impl QuantizedElement for u8 {
    const OUTPUT_TYPE: OutputType = OutputType::U8;
}

impl QuantizedElement for i8 {
    const OUTPUT_TYPE: OutputType = OutputType::I8;
}

impl Requantize {
    /// Requantization to the output type of `zero_point` (`u8` or `i8`), clamped to
    /// that type's whole range.
    pub fn new<Q: QuantizedElement>(scheme: Requantization, zero_point: Q) -> Self {
        let (min, max) = Q::OUTPUT_TYPE.range();
        Requantize { scheme, zero_point: zero_point.into(), min, max }
    }

    /// Requantization with the zero point and clamp widened to `i32`, for callers that
    /// hold them so (a C ABI, a model loader): they are checked against the output
    /// buffer's type at the call, not here.
    pub fn from_i32(scheme: Requantization, zero_point: i32, min: i32, max: i32) -> Self {
        Requantize { scheme, zero_point, min, max }
    }

    /// Requantization to u8 output with zero point `zero_point`, clamped to `[0, 255]`.
    pub fn u8(scheme: Requantization, zero_point: u8) -> Self {
        Requantize::new(scheme, zero_point)
    }

    /// Requantization to i8 output with zero point `zero_point`, clamped to
    /// `[-128, 127]`.
    pub fn i8(scheme: Requantization, zero_point: i8) -> Self {
        Requantize::new(scheme, zero_point)
    }

    /// The same requantization clamped to `[min, max]`, given in the output type's
    /// range (the call checks it against the output buffer's type).
    pub fn with_clamp(mut self, min: i32, max: i32) -> Self {
        self.min = min;
        self.max = max;
        self
    }

    /// The same requantization followed by a ReLU: the lower clamp becomes the zero
    /// point (or stays, if it is higher already).
    pub fn with_relu(mut self) -> Self {
        self.min = self.min.max(self.zero_point);
        self
    }
}

/// Dequantization to f32 output (MLAS's float output processor, dynamic
/// quantization): per output channel `n`, `f32(acc) · scale[n] + bias[n]`, where `acc`
/// is the accumulator plus the stage's i32 bias (if any), each operation one f32
/// rounding to nearest even, in that order (no FMA). Build one with
/// [`Dequantize::new`] and [`with_bias`](Dequantize::with_bias).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Dequantize {
    /// The f32 multiplier per tensor or per channel, finite.
    pub scale: Channelwise<f32>,
    /// An f32 bias per output channel, finite, added after the multiply.
    pub bias: Option<Vec<f32>>,
}

impl Dequantize {
    /// `f32(acc) · scale`, the scale per tensor (`f32`) or per channel (`Vec<f32>`).
    pub fn new(scale: impl Into<Channelwise<f32>>) -> Self {
        Dequantize { scale: scale.into(), bias: None }
    }

    /// The same, plus an f32 bias per output channel.
    pub fn with_bias(mut self, bias: impl Into<Vec<f32>>) -> Self {
        self.bias = Some(bias.into());
        self
    }
}

/// What happens to the i32 accumulators before they are stored.
///
/// An `OutputStage` with neither `requantize` nor `dequantize` produces i32 output;
/// with `requantize`, u8 or i8 output (the output buffer's type decides which); with
/// `dequantize`, f32 output. Build one with [`OutputStage::i32`],
/// [`OutputStage::requantized`] or [`OutputStage::dequantized`], then
/// [`with_bias`](OutputStage::with_bias). The stage owns its parameters.
#[derive(Clone, Debug, PartialEq, Default)]
#[non_exhaustive]
pub struct OutputStage {
    /// An i32 bias per output channel, added with wrapping.
    pub bias: Option<Vec<i32>>,
    /// Requantization to u8/i8; `None` stores the raw i32 values.
    pub requantize: Option<Requantize>,
    /// Dequantization to f32 (with f32 output only).
    pub dequantize: Option<Dequantize>,
}

impl OutputStage {
    /// A stage with an optional bias and an optional requantization: the general form
    /// of [`i32`](OutputStage::i32), [`requantized`](OutputStage::requantized) and
    /// [`with_bias`](OutputStage::with_bias).
    pub fn new(bias: Option<Vec<i32>>, requantize: Option<Requantize>) -> Self {
        OutputStage { bias, requantize, dequantize: None }
    }

    /// The raw i32 accumulators, stored as they are (plus a bias, if one is added).
    pub fn i32() -> Self {
        OutputStage { bias: None, requantize: None, dequantize: None }
    }

    /// The accumulators requantized to u8 or i8.
    pub fn requantized(requantize: Requantize) -> Self {
        OutputStage { bias: None, requantize: Some(requantize), dequantize: None }
    }

    /// The accumulators dequantized to f32.
    pub fn dequantized(dequantize: Dequantize) -> Self {
        OutputStage { bias: None, requantize: None, dequantize: Some(dequantize) }
    }

    /// The same stage with an i32 bias per output channel, added (wrapping) before
    /// requantization.
    pub fn with_bias(mut self, bias: impl Into<Vec<i32>>) -> Self {
        self.bias = Some(bias.into());
        self
    }
}

/// The element type of an output matrix. Non-exhaustive: later versions may add
/// types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OutputType {
    /// Raw i32 accumulators (plus bias).
    I32,
    /// Requantized u8.
    U8,
    /// Requantized i8.
    I8,
    /// Dequantized f32.
    F32,
}

impl OutputType {
    /// The range of values the type holds, as i32.
    pub fn range(self) -> (i32, i32) {
        match self {
            OutputType::I32 => (i32::MIN, i32::MAX),
            OutputType::U8 => (0, 255),
            OutputType::I8 => (-128, 127),
            OutputType::F32 => (i32::MIN, i32::MAX),
        }
    }

    /// The type's name in Rust spelling.
    pub fn name(self) -> &'static str {
        match self {
            OutputType::I32 => "i32",
            OutputType::U8 => "u8",
            OutputType::I8 => "i8",
            OutputType::F32 => "f32",
        }
    }
}

/// A dense, row-major output matrix produced by the reference. Equality is of the
/// bytes: f32 values compare by their bits (−0 differs from +0).
#[derive(Clone, Debug)]
pub enum OutputData {
    /// i32 output.
    I32(Vec<i32>),
    /// u8 output.
    U8(Vec<u8>),
    /// i8 output.
    I8(Vec<i8>),
    /// f32 output.
    F32(Vec<f32>),
}

impl PartialEq for OutputData {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (OutputData::I32(a), OutputData::I32(b)) => a == b,
            (OutputData::U8(a), OutputData::U8(b)) => a == b,
            (OutputData::I8(a), OutputData::I8(b)) => a == b,
            (OutputData::F32(a), OutputData::F32(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
            }
            _ => false,
        }
    }
}

impl Eq for OutputData {}

impl OutputData {
    /// The number of elements.
    pub fn len(&self) -> usize {
        match self {
            OutputData::I32(v) => v.len(),
            OutputData::U8(v) => v.len(),
            OutputData::I8(v) => v.len(),
            OutputData::F32(v) => v.len(),
        }
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type.
    pub fn output_type(&self) -> OutputType {
        match self {
            OutputData::I32(_) => OutputType::I32,
            OutputData::U8(_) => OutputType::U8,
            OutputData::I8(_) => OutputType::I8,
            OutputData::F32(_) => OutputType::F32,
        }
    }
}

/// The shape of a 2-D convolution over NHWC input with OHWI weights.
///
/// Input `[batch, in_height, in_width, in_channels]`, weights
/// `[out_channels, kernel_height, kernel_width, in_channels / groups]`, output
/// `[batch, out_height, out_width, out_channels]`.
///
/// Build one with [`Conv2dParams::new`] and the `with_*` methods:
///
/// ```
/// # use qgemm_reference::Conv2dParams;
/// // A 3×3 convolution of a 1×56×56×64 input to 128 channels, stride 2, padding 1.
/// let p = Conv2dParams::new([1, 56, 56, 64], 128, [3, 3]).with_stride(2, 2).with_padding(1, 1, 1, 1);
/// assert_eq!((p.out_height(), p.out_width()), (Some(28), Some(28)));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Conv2dParams {
    /// N.
    pub batch: usize,
    /// H.
    pub in_height: usize,
    /// W.
    pub in_width: usize,
    /// C, a multiple of `groups`.
    pub in_channels: usize,
    /// OC, a multiple of `groups`.
    pub out_channels: usize,
    /// KH.
    pub kernel_height: usize,
    /// KW.
    pub kernel_width: usize,
    /// Vertical stride, ≥ 1.
    pub stride_height: usize,
    /// Horizontal stride, ≥ 1.
    pub stride_width: usize,
    /// Vertical dilation, ≥ 1.
    pub dilation_height: usize,
    /// Horizontal dilation, ≥ 1.
    pub dilation_width: usize,
    /// Rows of padding above the input.
    pub pad_top: usize,
    /// Columns of padding left of the input.
    pub pad_left: usize,
    /// Rows of padding below the input.
    pub pad_bottom: usize,
    /// Columns of padding right of the input.
    pub pad_right: usize,
    /// Channel groups, ≥ 1; `groups == in_channels` is a depthwise convolution.
    pub groups: usize,
}

impl Conv2dParams {
    /// A convolution of an input of shape `[batch, height, width, channels]` (NHWC) to
    /// `out_channels` channels with a `[height, width]` kernel: stride 1, dilation 1,
    /// no padding, one group.
    pub fn new(input_nhwc: [usize; 4], out_channels: usize, kernel_hw: [usize; 2]) -> Self {
        let [batch, in_height, in_width, in_channels] = input_nhwc;
        let [kernel_height, kernel_width] = kernel_hw;
        Conv2dParams {
            batch,
            in_height,
            in_width,
            in_channels,
            out_channels,
            kernel_height,
            kernel_width,
            stride_height: 1,
            stride_width: 1,
            dilation_height: 1,
            dilation_width: 1,
            pad_top: 0,
            pad_left: 0,
            pad_bottom: 0,
            pad_right: 0,
            groups: 1,
        }
    }

    /// The same convolution over a batch of `batch` images.
    pub fn with_batch(mut self, batch: usize) -> Self {
        self.batch = batch;
        self
    }

    /// The same convolution with stride `(vertical, horizontal)`.
    pub fn with_stride(mut self, vertical: usize, horizontal: usize) -> Self {
        self.stride_height = vertical;
        self.stride_width = horizontal;
        self
    }

    /// The same convolution with dilation `(vertical, horizontal)`.
    pub fn with_dilation(mut self, vertical: usize, horizontal: usize) -> Self {
        self.dilation_height = vertical;
        self.dilation_width = horizontal;
        self
    }

    /// The same convolution with padding `(top, left, bottom, right)`.
    pub fn with_padding(mut self, top: usize, left: usize, bottom: usize, right: usize) -> Self {
        self.pad_top = top;
        self.pad_left = left;
        self.pad_bottom = bottom;
        self.pad_right = right;
        self
    }

    /// The same convolution with `groups` channel groups.
    pub fn with_groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }

    /// The output height, or `None` when the (dilated) kernel does not fit in the
    /// padded input, a stride or dilation is zero, or a size overflows.
    pub fn out_height(&self) -> Option<usize> {
        out_size(
            self.in_height,
            self.pad_top,
            self.pad_bottom,
            self.kernel_height,
            self.stride_height,
            self.dilation_height,
        )
    }

    /// The output width, or `None` as for [`out_height`](Self::out_height).
    pub fn out_width(&self) -> Option<usize> {
        out_size(
            self.in_width,
            self.pad_left,
            self.pad_right,
            self.kernel_width,
            self.stride_width,
            self.dilation_width,
        )
    }

    /// Input channels per group.
    pub fn in_channels_per_group(&self) -> usize {
        self.in_channels / self.groups
    }

    /// Output channels per group.
    pub fn out_channels_per_group(&self) -> usize {
        self.out_channels / self.groups
    }
}

/// `(input + pads − dilation·(kernel − 1) − 1) / stride + 1`, when the dilated kernel
/// fits in the padded input.
fn out_size(
    input: usize,
    pad_before: usize,
    pad_after: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
) -> Option<usize> {
    if kernel == 0 || stride == 0 || dilation == 0 {
        return None;
    }
    let padded = input.checked_add(pad_before)?.checked_add(pad_after)?;
    let extent = dilation.checked_mul(kernel - 1)?.checked_add(1)?;
    if extent > padded {
        return None;
    }
    Some((padded - extent) / stride + 1)
}
