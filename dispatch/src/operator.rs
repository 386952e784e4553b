//! Operators: what an engine creates once per layer and runs many times.
//!
//! An operator owns its packed weights, its output stage, its input zero point, its
//! output type and its shape, all checked once when it is created (XNNPACK's
//! create/reshape/setup/run in three calls: [`Linear::new`] or [`Conv2d::new`],
//! [`Conv2d::reshape`], and `run`). A run then checks only what the call brings: the
//! lengths of its input and output. Operators are `Send + Sync`: one operator serves
//! every thread of an engine, each thread with its own [`Workspace`].

use qgemm_reference::{Conv2dParams, OutputStage, OutputType};

use crate::conv::{PackedConvWeights, check_params, conv2d_in};
use crate::error::{Result, bail};
use crate::gemm::{ActivationElement, Options, OutputMatrix, PackedWeights, gemm_in};
use crate::validate::output_stage;
use crate::workspace::Workspace;

/// A quantized linear (fully connected) layer: `y = stage(x·Wᵀ)` for inputs `x` of
/// `in_features` values per row, u8 (the default) or i8 (`Linear<i8>`, from an i8
/// input zero point), with its packed weights, input zero point, output stage and
/// output type fixed at creation.
///
/// ```
/// use qgemm::{Linear, OutputMatrix, OutputStage, OutputType, PackedWeights, Requantization,
///             Requantize, Weights, Workspace};
///
/// // 3 inputs → 2 outputs, weights [out_features, in_features] as PyTorch holds them.
/// let w: [i8; 6] = [1, 2, 3, -1, -2, -3];
/// let stage = OutputStage::requantized(Requantize::u8(Requantization::float(0.5), 128)).with_bias([10, 10]);
/// let linear = Linear::new(PackedWeights::new(Weights::nxk(&w, 2, 3))?, 128u8, stage, OutputType::U8)?;
///
/// let mut workspace = Workspace::new();
/// let x: [u8; 6] = [129, 130, 131, 128, 128, 255]; // 2 rows
/// let mut y = [0u8; 4];
/// linear.run(&x, 2, OutputMatrix::u8(&mut y, 2, 2), &mut workspace)?;
/// assert_eq!(y, [140, 126, 255, 0]);
/// # Ok::<(), qgemm::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Linear<X: ActivationElement = u8> {
    weights: PackedWeights,
    input_zero_point: X,
    stage: OutputStage,
    output: OutputType,
    options: Options,
}

impl<X: ActivationElement> Linear<X> {
    /// A linear layer over `weights` (K = `in_features`, N = `out_features`), for
    /// inputs with zero point `input_zero_point`, producing `output` through `stage`.
    /// It runs single-threaded until [`with_options`](Self::with_options) says
    /// otherwise.
    ///
    /// # Errors
    /// Every error of the output stage for N channels and `output` (a bias or scales
    /// of the wrong length, a zero point or clamp outside the output type, a stage
    /// that does not fit the type), as [`gemm`](crate::gemm) reports them.
    pub fn new(
        weights: PackedWeights,
        input_zero_point: X,
        stage: OutputStage,
        output: OutputType,
    ) -> Result<Linear<X>> {
        output_stage(&stage, weights.n(), output)?;
        Ok(Linear { weights, input_zero_point, stage, output, options: Options::new() })
    }

    /// The same layer, run with `options` (threads, spin time).
    ///
    /// # Errors
    /// A thread count outside `1..=`[`MAX_THREADS`](crate::MAX_THREADS), or
    /// `options.isa` other than the weights' ISA.
    pub fn with_options(self, options: Options) -> Result<Linear<X>> {
        options.check(self.weights.isa())?;
        Ok(Linear { options, ..self })
    }

    /// K, the values per input row.
    pub fn in_features(&self) -> usize {
        self.weights.k()
    }

    /// N, the values per output row.
    pub fn out_features(&self) -> usize {
        self.weights.n()
    }

    /// The packed weights (to save them: [`PackedWeights::to_bytes`]).
    pub fn weights(&self) -> &PackedWeights {
        &self.weights
    }

    /// The output stage.
    pub fn stage(&self) -> &OutputStage {
        &self.stage
    }

    /// The input zero point.
    pub fn input_zero_point(&self) -> X {
        self.input_zero_point
    }

    /// The output type.
    pub fn output_type(&self) -> OutputType {
        self.output
    }

    /// The options each run uses.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// `rows` input rows, dense (`rows × in_features` values), into `output`
    /// (`rows × out_features`, of the layer's output type; its row stride may be
    /// larger), with the scratch in `workspace`.
    ///
    /// # Errors
    /// An input whose length is not `rows · in_features`, an output of another type or
    /// shape, and every error of [`gemm_in`](crate::gemm_in); on error nothing is
    /// written.
    pub fn run(&self, input: &[X], rows: usize, output: OutputMatrix<'_>, workspace: &mut Workspace) -> Result<()> {
        self.check_output(output.output_type())?;
        let k = self.in_features();
        if rows.checked_mul(k) != Some(input.len()) {
            bail!(BufferLength, "linear: input of {} values for {rows} rows × in_features = {k}", input.len());
        }
        let a = X::activations(input, rows, k, self.input_zero_point);
        gemm_in(&a, &self.weights, &self.stage, output, &self.options, workspace)
    }

    fn check_output(&self, got: OutputType) -> Result<()> {
        check_output_type("linear", self.output, got)
    }
}

fn check_output_type(op: &str, want: OutputType, got: OutputType) -> Result<()> {
    if want != got {
        bail!(OutputType, "{op}: the operator produces {} output; the output given is {}", want.name(), got.name());
    }
    Ok(())
}

/// A quantized 2-D convolution over NHWC input, u8 (the default) or i8 (`Conv2d<i8>`,
/// from an i8 input zero point): its packed weights, shape, input zero point, output
/// stage and output type fixed at creation; the input's batch,
/// height and width can change with [`reshape`](Self::reshape).
///
/// ```
/// use qgemm::{Conv2d, Conv2dParams, ConvWeights, OutputMatrix, OutputStage, OutputType,
///             PackedConvWeights, Workspace};
///
/// // A 3×3 convolution, 2 → 4 channels, padding 1, on a 1×5×5 image; i32 output.
/// let params = Conv2dParams::new([1, 5, 5, 2], 4, [3, 3]).with_padding(1, 1, 1, 1);
/// let w: Vec<i8> = (0..4 * 3 * 3 * 2).map(|i| (i % 5) as i8 - 2).collect();
/// let weights = PackedConvWeights::new(ConvWeights::new(&w, &params))?;
/// let mut conv = Conv2d::new(weights, params, 0u8, OutputStage::i32(), OutputType::I32)?;
/// assert_eq!(conv.output_shape(), [1, 5, 5, 4]);
///
/// let mut workspace = Workspace::new();
/// let image = vec![1u8; 5 * 5 * 2];
/// let mut out = vec![0i32; 5 * 5 * 4];
/// conv.run(&image, OutputMatrix::i32(&mut out, 25, 4), &mut workspace)?;
///
/// // The same operator on two 8×8 images.
/// conv.reshape(2, 8, 8)?;
/// let mut out = vec![0i32; 2 * 8 * 8 * 4];
/// conv.run(&vec![1u8; 2 * 8 * 8 * 2], OutputMatrix::i32(&mut out, 128, 4), &mut workspace)?;
/// # Ok::<(), qgemm::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Conv2d<X: ActivationElement = u8> {
    weights: PackedConvWeights,
    params: Conv2dParams,
    input_zero_point: X,
    stage: OutputStage,
    output: OutputType,
    options: Options,
}

impl<X: ActivationElement> Conv2d<X> {
    /// A convolution of shape `params` with `weights` (packed for the same filter
    /// shape), for inputs with zero point `input_zero_point`, producing `output`
    /// through `stage`; single-threaded until [`with_options`](Self::with_options).
    ///
    /// # Errors
    /// Invalid `params`, weights packed for another filter shape, and every error of
    /// the output stage for OC channels and `output`, as [`conv2d`](crate::conv2d)
    /// reports them.
    pub fn new(
        weights: PackedConvWeights,
        params: Conv2dParams,
        input_zero_point: X,
        stage: OutputStage,
        output: OutputType,
    ) -> Result<Conv2d<X>> {
        check_params(&params)?;
        weights.path(&params)?;
        output_stage(&stage, params.out_channels, output)?;
        Ok(Conv2d { weights, params, input_zero_point, stage, output, options: Options::new() })
    }

    /// The same convolution, run with `options` (threads, spin time).
    ///
    /// # Errors
    /// As [`Linear::with_options`].
    pub fn with_options(self, options: Options) -> Result<Conv2d<X>> {
        options.check(self.weights.isa())?;
        Ok(Conv2d { options, ..self })
    }

    /// The same convolution over inputs of `batch` images of `height × width`.
    ///
    /// # Errors
    /// A kernel that does not fit the padded input, or sizes that overflow; the
    /// operator is unchanged on error.
    pub fn reshape(&mut self, batch: usize, height: usize, width: usize) -> Result<()> {
        let mut params = self.params.with_batch(batch);
        (params.in_height, params.in_width) = (height, width);
        check_params(&params)?;
        self.params = params;
        Ok(())
    }

    /// The convolution's shape.
    pub fn params(&self) -> &Conv2dParams {
        &self.params
    }

    /// `[batch, out_height, out_width, out_channels]` of the output.
    pub fn output_shape(&self) -> [usize; 4] {
        let p = &self.params;
        let (oh, ow) = (p.out_height().unwrap_or(0), p.out_width().unwrap_or(0));
        [p.batch, oh, ow, p.out_channels]
    }

    /// The packed weights (to save them: [`PackedConvWeights::to_bytes`]).
    pub fn weights(&self) -> &PackedConvWeights {
        &self.weights
    }

    /// The output stage.
    pub fn stage(&self) -> &OutputStage {
        &self.stage
    }

    /// The input zero point.
    pub fn input_zero_point(&self) -> X {
        self.input_zero_point
    }

    /// The output type.
    pub fn output_type(&self) -> OutputType {
        self.output
    }

    /// The options each run uses.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The convolution of `input` (NHWC, dense, of the current shape) into `output`,
    /// viewed as a `(N·OH·OW) × OC` matrix of the operator's output type (its row
    /// stride may be larger), with the scratch in `workspace`.
    ///
    /// # Errors
    /// An input of another length, an output of another type or shape, and every
    /// error of [`conv2d_in`](crate::conv2d_in); on error nothing is written.
    pub fn run(&self, input: &[X], output: OutputMatrix<'_>, workspace: &mut Workspace) -> Result<()> {
        check_output_type("conv2d", self.output, output.output_type())?;
        let input = X::conv_input(input, self.input_zero_point);
        conv2d_in(&input, &self.weights, &self.params, &self.stage, output, &self.options, workspace)
    }
}
