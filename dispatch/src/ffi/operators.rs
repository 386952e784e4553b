//! The C ABI's operators (`qgemm::Linear`, `qgemm::Conv2d`): created once from packed
//! weights (copied, so the weights handle stays the caller's), an output stage and
//! an output type, then run many times.

use super::threads::{self, qgemm_workspace};
use super::{
    Failure, QGEMM_OUTPUT_F32, QGEMM_OUTPUT_I8, QGEMM_OUTPUT_I32, QGEMM_OUTPUT_U8, QGEMM_STATUS_INVALID_ENUM,
    QGEMM_STATUS_NULL_POINTER, boundary, conv2d_params, deref, fail, free_handle, output_matrix, output_stage,
    qgemm_conv2d_params, qgemm_output, qgemm_output_stage, qgemm_output_type, qgemm_packed_conv_weights,
    qgemm_packed_weights, qgemm_status, slice,
};
use crate::gemm::bytes_as_i8;
use crate::{Conv2d, Linear, OutputType};

/// A linear layer (`qgemm::Linear`, on `uint8_t` or `int8_t` input); opaque. Immutable
/// once made, so one handle may serve runs on several threads at once, each with its
/// own workspace.
#[derive(Debug)]
pub struct qgemm_linear(Input<Linear<u8>, Linear<i8>>);

/// A convolution (`qgemm::Conv2d`, on `uint8_t` or `int8_t` input); opaque. Runs on
/// several threads at once are safe; [`qgemm_conv2d_op_reshape`] must not run at the
/// same time as anything else on it.
#[derive(Debug)]
pub struct qgemm_conv2d_op(Input<Conv2d<u8>, Conv2d<i8>>);

/// An operator for u8 input, or for i8 input.
#[derive(Debug)]
enum Input<U, S> {
    Unsigned(U),
    Signed(S),
}

const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<qgemm_linear>();
    shareable::<qgemm_conv2d_op>();
};

fn to_output_type(t: qgemm_output_type) -> Result<OutputType, Failure> {
    match t {
        QGEMM_OUTPUT_I32 => Ok(OutputType::I32),
        QGEMM_OUTPUT_U8 => Ok(OutputType::U8),
        QGEMM_OUTPUT_I8 => Ok(OutputType::I8),
        QGEMM_OUTPUT_F32 => Ok(OutputType::F32),
        other => fail(QGEMM_STATUS_INVALID_ENUM, format!("output_type {other} is not a QGEMM_OUTPUT_* constant")),
    }
}

/// Writes a new handle to `*out`.
///
/// # Safety
/// `out` is null or valid for a write.
unsafe fn put<T>(out: *mut *mut T, value: T) -> Result<(), Failure> {
    if out.is_null() {
        return fail(QGEMM_STATUS_NULL_POINTER, "out is null");
    }
    // SAFETY: `out` is non-null and writable (the caller's contract).
    unsafe { out.write(Box::into_raw(Box::new(value))) };
    Ok(())
}

/// A linear layer over a copy of `weights` (K = in_features, N = out_features), for
/// inputs with zero point `input_zero_point` (`uint8_t` inputs, or with
/// `signed_input` `int8_t` ones, the zero point then `(uint8_t)zp`), producing
/// `output_type` through `stage`, on up to `threads` threads per run; written to
/// `*out`. Release it with [`qgemm_linear_free`].
///
/// # Safety
/// Each pointer must be null or valid; the stage's pointers must satisfy their
/// lengths (they are copied).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qgemm_linear_new(
    weights: *const qgemm_packed_weights,
    input_zero_point: u8,
    signed_input: bool,
    stage: *const qgemm_output_stage,
    output_type: qgemm_output_type,
    threads: usize,
    out: *mut *mut qgemm_linear,
) -> qgemm_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (w, stage) = unsafe { (deref(weights, "weights")?, deref(stage, "stage")?) };
        // SAFETY: the caller's contract, for the stage's pointers.
        let stage = unsafe { output_stage(stage, w.0.n())? };
        let (ty, options) = (to_output_type(output_type)?, threads::options(threads));
        let linear = if signed_input {
            let zp = input_zero_point as i8;
            Input::Signed(Linear::new(w.0.clone(), zp, stage, ty)?.with_options(options)?)
        } else {
            Input::Unsigned(Linear::new(w.0.clone(), input_zero_point, stage, ty)?.with_options(options)?)
        };
        // SAFETY: the caller's contract.
        unsafe { put(out, qgemm_linear(linear)) }
    })
}

/// Runs a linear layer on `rows` dense input rows (`rows * in_features` values at
/// `input`, `int8_t` ones cast for a layer made with `signed_input`) into `output` (`rows × out_features` of the layer's output type), in
/// `workspace` (null: a fresh one for this run). On error nothing is written.
///
/// # Safety
/// Each pointer must be null or valid; the buffers must satisfy their lengths, the
/// output must not overlap the input; `workspace` is null or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qgemm_linear_run(
    linear: *const qgemm_linear,
    input: *const u8,
    input_len: usize,
    rows: usize,
    output: *const qgemm_output,
    workspace: *mut qgemm_workspace,
) -> qgemm_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (linear, c) = unsafe { (deref(linear, "linear")?, deref(output, "output")?) };
        // SAFETY: the caller's contract, for each buffer and its length.
        let (input, output) = unsafe { (slice(input, input_len, "input")?, output_matrix(c, "output")?) };
        // SAFETY: the caller's contract.
        let mut held = unsafe { threads::hold(workspace)? };
        match &linear.0 {
            Input::Unsigned(l) => l.run(input, rows, output, held.get())?,
            Input::Signed(l) => l.run(bytes_as_i8(input), rows, output, held.get())?,
        }
        Ok(())
    })
}

/// Releases a linear layer; null does nothing.
///
/// # Safety
/// `linear` must be null or a handle from [`qgemm_linear_new`] not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qgemm_linear_free(linear: *mut qgemm_linear) {
    // SAFETY: the caller's contract.
    unsafe { free_handle(linear) }
}

/// A convolution of shape `params` with a copy of `weights`, for inputs with zero
/// point `input_zero_point` (`int8_t` ones with `signed_input`, as for
/// [`qgemm_linear_new`]), producing `output_type` through `stage`, on up to `threads`
/// threads per run; written to `*out`. Release it with [`qgemm_conv2d_op_free`].
///
/// # Safety
/// As [`qgemm_linear_new`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qgemm_conv2d_op_new(
    weights: *const qgemm_packed_conv_weights,
    params: *const qgemm_conv2d_params,
    input_zero_point: u8,
    signed_input: bool,
    stage: *const qgemm_output_stage,
    output_type: qgemm_output_type,
    threads: usize,
    out: *mut *mut qgemm_conv2d_op,
) -> qgemm_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (w, p, stage) = unsafe { (deref(weights, "weights")?, deref(params, "params")?, deref(stage, "stage")?) };
        // SAFETY: the caller's contract, for the stage's pointers.
        let stage = unsafe { output_stage(stage, p.out_channels)? };
        let (ty, options, params) = (to_output_type(output_type)?, threads::options(threads), conv2d_params(*p));
        let conv = if signed_input {
            let zp = input_zero_point as i8;
            Input::Signed(Conv2d::new(w.0.clone(), params, zp, stage, ty)?.with_options(options)?)
        } else {
            Input::Unsigned(Conv2d::new(w.0.clone(), params, input_zero_point, stage, ty)?.with_options(options)?)
        };
        // SAFETY: the caller's contract.
        unsafe { put(out, qgemm_conv2d_op(conv)) }
    })
}

/// Sets the input size of a convolution: `batch` images of `height × width`. On
/// error the operator is unchanged.
///
/// # Safety
/// `conv` must be null or a live handle that nothing else uses during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qgemm_conv2d_op_reshape(
    conv: *mut qgemm_conv2d_op,
    batch: usize,
    height: usize,
    width: usize,
) -> qgemm_status {
    boundary(|| {
        // SAFETY: the caller's contract: a live handle, used by nothing else now.
        let Some(conv) = (unsafe { conv.as_mut() }) else {
            return fail(QGEMM_STATUS_NULL_POINTER, "conv is null");
        };
        match &mut conv.0 {
            Input::Unsigned(c) => c.reshape(batch, height, width)?,
            Input::Signed(c) => c.reshape(batch, height, width)?,
        }
        Ok(())
    })
}

/// Runs a convolution on `input` (NHWC, `input_len` values of the current shape) into
/// `output` (`(N·OH·OW) × OC` of the operator's output type), in `workspace` (null: a
/// fresh one for this run). On error nothing is written.
///
/// # Safety
/// As [`qgemm_linear_run`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qgemm_conv2d_op_run(
    conv: *const qgemm_conv2d_op,
    input: *const u8,
    input_len: usize,
    output: *const qgemm_output,
    workspace: *mut qgemm_workspace,
) -> qgemm_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let (conv, c) = unsafe { (deref(conv, "conv")?, deref(output, "output")?) };
        // SAFETY: the caller's contract, for each buffer and its length.
        let (input, output) = unsafe { (slice(input, input_len, "input")?, output_matrix(c, "output")?) };
        // SAFETY: the caller's contract.
        let mut held = unsafe { threads::hold(workspace)? };
        match &conv.0 {
            Input::Unsigned(c) => c.run(input, output, held.get())?,
            Input::Signed(c) => c.run(bytes_as_i8(input), output, held.get())?,
        }
        Ok(())
    })
}

/// Releases a convolution; null does nothing.
///
/// # Safety
/// `conv` must be null or a handle from [`qgemm_conv2d_op_new`] not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qgemm_conv2d_op_free(conv: *mut qgemm_conv2d_op) {
    // SAFETY: the caller's contract.
    unsafe { free_handle(conv) }
}
