//! The C ABI: what C and C++ engines link. `include/qgemm.h` is generated from this
//! file by cbindgen (`dispatch/cbindgen.toml`); the README's "Using qgemm from C" shows
//! how to build and link it.
//!
//! Conventions, after rustls-ffi:
//! - every function that can fail returns a [`qgemm_status`], `QGEMM_OK` (0) on
//!   success; on failure nothing is written to any output, and a human-readable message
//!   for the calling thread is kept until its next failure ([`qgemm_last_error_message`]);
//! - every export runs inside a panic boundary: a panic becomes
//!   `QGEMM_STATUS_PANIC` (or the neutral value of a function without a status),
//!   never an unwind into C; only `qgemm_version`, which returns a constant, has no
//!   code that could panic;
//! - pointers come with lengths (in elements); a null pointer with a nonzero length,
//!   a length that does not match the shape, or a null handle is an error, never a
//!   read or write out of bounds;
//! - enumerations cross the boundary as `uint32_t` with named constants, so an
//!   out-of-range value from C is an error (`QGEMM_STATUS_INVALID_ENUM`), never an
//!   invalid Rust enum.
//!
//! Handles ([`qgemm_packed_weights`], [`qgemm_workspace`], [`qgemm_tasks`]) are opaque,
//! made by a `_new` function and released by the matching `_free`. Freeing one twice
//! is undefined behaviour, as for `free`.
//!
//! Threads: `qgemm_gemm_threaded` and `qgemm_conv2d_threaded` run on qgemm's helper
//! threads; an engine with its own pool cuts a call into tasks
//! (`qgemm_gemm_tasks_new`, `qgemm_conv2d_tasks_new`) and runs each with
//! `qgemm_tasks_run` on its threads.

#![allow(non_camel_case_types)]

mod operators;
mod threads;
mod weights_io;

use std::cell::RefCell;
use std::ffi::c_char;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::gemm::{bytes_as_i8, i8_bytes};
use crate::{
    Activations, Channelwise, Conv2dParams, ConvInput, ConvWeights, Dequantize, Error, ErrorKind, FilterLayout,
    FixedPointParams, Isa, NibbleConvWeights, NibbleFormat, NibbleWeights, OutputBuffer, OutputMatrix, OutputStage,
    PackedConvWeights, PackedWeights, Requantization, Requantize, WeightLayout, Weights,
};

pub use operators::{
    qgemm_conv2d_op, qgemm_conv2d_op_free, qgemm_conv2d_op_new, qgemm_conv2d_op_reshape, qgemm_conv2d_op_run,
    qgemm_linear, qgemm_linear_free, qgemm_linear_new, qgemm_linear_run,
};
pub use threads::{
    qgemm_conv2d_tasks_new, qgemm_conv2d_threaded, qgemm_gemm_tasks_new, qgemm_gemm_threaded, qgemm_partition,
    qgemm_tasks, qgemm_tasks_count, qgemm_tasks_free, qgemm_tasks_run, qgemm_workspace, qgemm_workspace_free,
    qgemm_workspace_new,
};
pub use weights_io::{
    qgemm_packed_conv_weights_load, qgemm_packed_conv_weights_save, qgemm_packed_weights_load,
    qgemm_packed_weights_save,
};

/// The result of a call: `QGEMM_OK` or why it failed.
pub type qgemm_status = u32;
/// Success.
pub const QGEMM_OK: qgemm_status = 0;
/// A required pointer is null (or a buffer's pointer is null with a nonzero length).
pub const QGEMM_STATUS_NULL_POINTER: qgemm_status = 1;
/// An enumeration value (ISA, layout, output type, scheme) is not one of its constants.
pub const QGEMM_STATUS_INVALID_ENUM: qgemm_status = 2;
/// A panic inside qgemm was caught at the boundary (a bug: please report it).
pub const QGEMM_STATUS_PANIC: qgemm_status = 3;
/// A dimension is invalid or inconsistent with another.
pub const QGEMM_STATUS_DIMENSION: qgemm_status = 10;
/// A row stride is smaller than the row it must hold.
pub const QGEMM_STATUS_STRIDE: qgemm_status = 11;
/// A buffer's length does not match the shape it is given with.
pub const QGEMM_STATUS_BUFFER_LENGTH: qgemm_status = 12;
/// A size product overflows.
pub const QGEMM_STATUS_OVERFLOW: qgemm_status = 13;
/// Memory for packed weights, or a call's scratch, could not be allocated (the output
/// is untouched).
pub const QGEMM_STATUS_OUT_OF_MEMORY: qgemm_status = 14;
/// A fixed-point multiplier is neither 0 nor in [2^30, 2^31).
pub const QGEMM_STATUS_MULTIPLIER: qgemm_status = 15;
/// A fixed-point shift is outside [-31, 30].
pub const QGEMM_STATUS_SHIFT: qgemm_status = 16;
/// A scale is NaN, infinite or not positive.
pub const QGEMM_STATUS_SCALE: qgemm_status = 17;
/// A zero point is outside the output type's range.
pub const QGEMM_STATUS_ZERO_POINT: qgemm_status = 18;
/// A clamp is outside the output type's range, or min > max.
pub const QGEMM_STATUS_CLAMP: qgemm_status = 19;
/// The output stage does not fit the output type.
pub const QGEMM_STATUS_OUTPUT_TYPE: qgemm_status = 20;
/// Packed weights were made for another shape or ISA.
pub const QGEMM_STATUS_WEIGHTS_MISMATCH: qgemm_status = 21;
/// The ISA cannot run on this CPU, or this build has no kernel for it.
pub const QGEMM_STATUS_ISA_UNAVAILABLE: qgemm_status = 22;
/// An ISA name is not known.
pub const QGEMM_STATUS_UNKNOWN_ISA: qgemm_status = 23;
/// A convolution's kernel does not fit its padded input.
pub const QGEMM_STATUS_CONV_OUTPUT_SIZE: qgemm_status = 24;
/// The number of threads is zero or above 4096 (`qgemm::MAX_THREADS`).
pub const QGEMM_STATUS_THREADS: qgemm_status = 25;
/// A partition's bounds do not cover the output.
pub const QGEMM_STATUS_PARTITION: qgemm_status = 26;
/// A task index past the last task, or a task that already ran.
pub const QGEMM_STATUS_TASK: qgemm_status = 27;
/// A workspace handle is in use by a call on another thread (one thread at a time may
/// use a workspace); nothing was written.
pub const QGEMM_STATUS_WORKSPACE_BUSY: qgemm_status = 28;
/// A parameter value this build does not support (`qgemm::ErrorKind::Unsupported`).
pub const QGEMM_STATUS_UNSUPPORTED: qgemm_status = 29;
/// Serialized weights are not a valid qgemm weights file (`qgemm::ErrorKind::Format`).
pub const QGEMM_STATUS_FORMAT: qgemm_status = 30;

/// An instruction-set target (`qgemm::Isa`).
pub type qgemm_isa = u32;
/// Plain Rust; runs anywhere.
pub const QGEMM_ISA_PORTABLE: qgemm_isa = 0;
/// x86-64 AVX2.
pub const QGEMM_ISA_AVX2: qgemm_isa = 1;
/// x86-64 AVX-VNNI.
pub const QGEMM_ISA_AVX_VNNI: qgemm_isa = 2;
/// x86-64 AVX-512 with VNNI.
pub const QGEMM_ISA_AVX512_VNNI: qgemm_isa = 3;
/// AArch64 NEON (ARMv8.0).
pub const QGEMM_ISA_NEON: qgemm_isa = 4;
/// AArch64 NEON with dotprod.
pub const QGEMM_ISA_NEON_DOTPROD: qgemm_isa = 5;
/// AArch64 NEON with i8mm.
pub const QGEMM_ISA_NEON_I8MM: qgemm_isa = 6;
/// x86-64 AMX-INT8.
pub const QGEMM_ISA_AMX_INT8: qgemm_isa = 7;

/// How a weight matrix is laid out.
pub type qgemm_weight_layout = u32;
/// K×N, row-major.
pub const QGEMM_LAYOUT_K_BY_N: qgemm_weight_layout = 0;
/// N×K, row-major (the PyTorch/ONNX linear-weight layout).
pub const QGEMM_LAYOUT_N_BY_K: qgemm_weight_layout = 1;

/// The element type of weights before packing.
pub type qgemm_weight_element = u32;
/// `int8_t` weights and zero points (the default: 0).
pub const QGEMM_WEIGHTS_I8: qgemm_weight_element = 0;
/// `uint8_t` weights and zero points (MLAS's U8U8), passed through the `int8_t`
/// pointers (cast them); packed as `w − 128` with zero point `zp − 128`, which
/// changes no result.
pub const QGEMM_WEIGHTS_U8: qgemm_weight_element = 1;
/// int4 weights in [−8, 7], two per byte (the lower index in the low nibble; each row
/// of the layout starts on a byte, so a row of L values takes `ceil(L / 2)` bytes),
/// passed through the `int8_t` pointer (cast it); `data_len` counts bytes. Zero points
/// are `int8_t` values in [−8, 7]. Kept 4-bit once packed.
pub const QGEMM_WEIGHTS_INT4: qgemm_weight_element = 2;
/// uint4 weights in [0, 15], stored as [`QGEMM_WEIGHTS_INT4`]'s (ONNX UINT4, PyTorch
/// `quint4x2`); zero points are `int8_t` values in [0, 15].
pub const QGEMM_WEIGHTS_UINT4: qgemm_weight_element = 3;

/// The order of convolution weights.
pub type qgemm_filter_layout = u32;
/// `[out_channels][kernel_height][kernel_width][in_channels / groups]` (TFLite).
pub const QGEMM_FILTER_OHWI: qgemm_filter_layout = 0;
/// `[out_channels][in_channels / groups][kernel_height][kernel_width]` (PyTorch, ONNX).
pub const QGEMM_FILTER_OIHW: qgemm_filter_layout = 1;

/// The element type of an output matrix.
pub type qgemm_output_type = u32;
/// Raw i32 (plus bias); the output stage must not requantize.
pub const QGEMM_OUTPUT_I32: qgemm_output_type = 0;
/// Requantized u8.
pub const QGEMM_OUTPUT_U8: qgemm_output_type = 1;
/// Requantized i8.
pub const QGEMM_OUTPUT_I8: qgemm_output_type = 2;
/// Dequantized f32 (`float`); the output stage's scheme is `QGEMM_SCHEME_DEQUANTIZE`.
pub const QGEMM_OUTPUT_F32: qgemm_output_type = 3;

/// A requantization scheme (see the README's semantics).
pub type qgemm_scheme = u32;
/// No requantization: i32 output.
pub const QGEMM_SCHEME_NONE: qgemm_scheme = 0;
/// TFLite reference / gemmlowp: doubling high multiply, rounding shift, ties away.
pub const QGEMM_SCHEME_FIXED_POINT: qgemm_scheme = 1;
/// TFLite optimized (ruy): the same, ties toward +infinity.
pub const QGEMM_SCHEME_FIXED_POINT_HALF_UP: qgemm_scheme = 2;
/// TFLite single rounding: one 64-bit multiply, one rounding, ties toward +infinity.
pub const QGEMM_SCHEME_FIXED_POINT_SINGLE_ROUNDING: qgemm_scheme = 3;
/// ONNX Runtime / PyTorch / XNNPACK: one f32 multiply, round half to even.
pub const QGEMM_SCHEME_FLOAT: qgemm_scheme = 4;
/// f32 output: `f32(acc) * scales[n] + f32_bias[n]` (each operation rounded once, no
/// FMA); `scales` and `params_len` as for `QGEMM_SCHEME_FLOAT` (finite), `f32_bias`
/// optional. The zero point and clamp are ignored.
pub const QGEMM_SCHEME_DEQUANTIZE: qgemm_scheme = 5;

/// Weights before packing: K×N i8 in `layout`, with one zero point per tensor
/// (`zero_points_len` = 1) or per output column (`zero_points_len` = N).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct qgemm_weights {
    /// `k * n` values (4-bit: two per byte, each row of the layout starting on a byte).
    pub data: *const i8,
    /// Elements at `data`; must be `k * n` (4-bit: bytes, K rows of `ceil(N / 2)` or N
    /// rows of `ceil(K / 2)` by the layout).
    pub data_len: usize,
    /// A `QGEMM_LAYOUT_*` constant.
    pub layout: qgemm_weight_layout,
    /// K, the depth.
    pub k: usize,
    /// N, the output columns.
    pub n: usize,
    /// The weight zero points.
    pub zero_points: *const i8,
    /// 1 (per tensor) or N (per column).
    pub zero_points_len: usize,
    /// A `QGEMM_WEIGHTS_*` constant: what `data` and `zero_points` point to.
    pub element: qgemm_weight_element,
}

/// The activations A of one call: M×K u8, row-major, rows `row_stride` apart.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct qgemm_activations {
    /// `A[m][k]` is at `data[m * row_stride + k]`.
    pub data: *const u8,
    /// Elements at `data`.
    pub data_len: usize,
    /// M.
    pub rows: usize,
    /// K.
    pub cols: usize,
    /// Distance between rows, `>= cols`.
    pub row_stride: usize,
    /// The activation zero point (with `signed`, the `int8_t` zero point's byte:
    /// `(uint8_t)zp`).
    pub zero_point: u8,
    /// False (the default): `uint8_t` activations. True: `int8_t` activations, passed
    /// through the `uint8_t` pointer (cast it), with an `int8_t` zero point.
    pub signed: bool,
}

/// The output C of one call: M×N of `type`, row-major, rows `row_stride` apart. Only
/// the `rows × cols` elements are written.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct qgemm_output {
    /// A `QGEMM_OUTPUT_*` constant: what `data` points to (`int32_t`, `uint8_t` or
    /// `int8_t`).
    pub r#type: qgemm_output_type,
    /// The elements.
    pub data: *mut core::ffi::c_void,
    /// Elements (not bytes) at `data`.
    pub data_len: usize,
    /// M.
    pub rows: usize,
    /// N.
    pub cols: usize,
    /// Distance between rows, `>= cols`.
    pub row_stride: usize,
}

/// The output stage: optional i32 bias, then requantization by `scheme` with its
/// parameters per tensor (`params_len` = 1) or per column (`params_len` = N), the
/// output zero point and the clamp.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct qgemm_output_stage {
    /// N values added to the accumulators (wrapping), or null for none.
    pub bias: *const i32,
    /// N, or 0 with a null `bias`.
    pub bias_len: usize,
    /// A `QGEMM_SCHEME_*` constant; `QGEMM_SCHEME_NONE` for i32 output (the fields
    /// below are then ignored).
    pub scheme: qgemm_scheme,
    /// Fixed-point schemes: the Q31 multipliers, each 0 or in [2^30, 2^31).
    pub multipliers: *const i32,
    /// Fixed-point schemes: the shifts, each in [-31, 30] (positive shifts left).
    pub shifts: *const i32,
    /// `QGEMM_SCHEME_FLOAT`: the f32 scales, finite and positive.
    pub scales: *const f32,
    /// Values at `multipliers` and `shifts`, or at `scales`: 1 or N.
    pub params_len: usize,
    /// The output zero point, in the output type's range.
    pub zero_point: i32,
    /// The lower clamp, in the output type's range.
    pub min: i32,
    /// The upper clamp, in the output type's range, `>= min`.
    pub max: i32,
    /// `QGEMM_SCHEME_DEQUANTIZE`: N f32 values added after the multiply, or null for
    /// none.
    pub f32_bias: *const f32,
    /// N, or 0 with a null `f32_bias`.
    pub f32_bias_len: usize,
}

/// Convolution weights before packing, dense, in `layout` order, with one zero point
/// per tensor (`zero_points_len` = 1) or per output channel (`zero_points_len` = OC).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct qgemm_conv_weights {
    /// `out_channels * kernel_height * kernel_width * (in_channels / groups)` values
    /// (4-bit: two per byte, each output channel's values starting on a byte).
    pub data: *const i8,
    /// Elements at `data` (4-bit: bytes, `out_channels` rows of `ceil(len / 2)`).
    pub data_len: usize,
    /// A `QGEMM_FILTER_*` constant.
    pub layout: qgemm_filter_layout,
    /// OC, a multiple of `groups`.
    pub out_channels: usize,
    /// KH.
    pub kernel_height: usize,
    /// KW.
    pub kernel_width: usize,
    /// C, the input channels of the convolution (all groups), a multiple of `groups`.
    pub in_channels: usize,
    /// Groups; `groups == in_channels` is depthwise.
    pub groups: usize,
    /// The weight zero points.
    pub zero_points: *const i8,
    /// 1 (per tensor) or OC (per output channel).
    pub zero_points_len: usize,
    /// A `QGEMM_WEIGHTS_*` constant: what `data` and `zero_points` point to.
    pub element: qgemm_weight_element,
}

/// The shape of a 2-D convolution: NHWC input `[batch, in_height, in_width,
/// in_channels]`, output `[batch, out_height, out_width, out_channels]` with
/// `out = (in + pad_before + pad_after − dilation·(kernel − 1) − 1) / stride + 1`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct qgemm_conv2d_params {
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
    /// Vertical stride, >= 1.
    pub stride_height: usize,
    /// Horizontal stride, >= 1.
    pub stride_width: usize,
    /// Vertical dilation, >= 1.
    pub dilation_height: usize,
    /// Horizontal dilation, >= 1.
    pub dilation_width: usize,
    /// Rows of padding above the input.
    pub pad_top: usize,
    /// Columns of padding left of the input.
    pub pad_left: usize,
    /// Rows of padding below the input.
    pub pad_bottom: usize,
    /// Columns of padding right of the input.
    pub pad_right: usize,
    /// Channel groups, >= 1; `groups == in_channels` is depthwise.
    pub groups: usize,
}

/// The Rust parameters of a C call (a function, not a `From` impl: the Rust API
/// carries no C types).
fn conv2d_params(p: qgemm_conv2d_params) -> Conv2dParams {
    let qgemm_conv2d_params {
        batch,
        in_height,
        in_width,
        in_channels,
        out_channels,
        kernel_height,
        kernel_width,
        stride_height,
        stride_width,
        dilation_height,
        dilation_width,
        pad_top,
        pad_left,
        pad_bottom,
        pad_right,
        groups,
    } = p;
    Conv2dParams::new([batch, in_height, in_width, in_channels], out_channels, [kernel_height, kernel_width])
        .with_stride(stride_height, stride_width)
        .with_dilation(dilation_height, dilation_width)
        .with_padding(pad_top, pad_left, pad_bottom, pad_right)
        .with_groups(groups)
}

/// The input of a convolution: NHWC u8, dense.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct qgemm_conv_input {
    /// `batch * in_height * in_width * in_channels` values.
    pub data: *const u8,
    /// Elements at `data`.
    pub data_len: usize,
    /// The input zero point; padded taps read as this value (with `signed`, the
    /// `int8_t` zero point's byte).
    pub zero_point: u8,
    /// False (the default): `uint8_t` input. True: `int8_t` input, passed through the
    /// `uint8_t` pointer (cast it), with an `int8_t` zero point.
    pub signed: bool,
}

/// Weights packed for one ISA's kernel (`qgemm::PackedWeights`); opaque. Immutable
/// once made, so one handle may serve calls on several threads at once.
#[derive(Debug)]
pub struct qgemm_packed_weights(PackedWeights);

// What the handles' documentation promises C callers.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<qgemm_packed_weights>();
    shareable::<qgemm_packed_conv_weights>();
};

/// Convolution weights packed for one ISA (`qgemm::PackedConvWeights`); opaque.
/// Immutable once made, so one handle may serve calls on several threads at once.
#[derive(Debug)]
pub struct qgemm_packed_conv_weights(PackedConvWeights);

/// Why a call failed: its status and message.
struct Failure {
    status: qgemm_status,
    message: String,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        let status = match e.kind() {
            ErrorKind::Dimension => QGEMM_STATUS_DIMENSION,
            ErrorKind::Stride => QGEMM_STATUS_STRIDE,
            ErrorKind::BufferLength => QGEMM_STATUS_BUFFER_LENGTH,
            ErrorKind::Overflow => QGEMM_STATUS_OVERFLOW,
            ErrorKind::OutOfMemory => QGEMM_STATUS_OUT_OF_MEMORY,
            ErrorKind::Multiplier => QGEMM_STATUS_MULTIPLIER,
            ErrorKind::Shift => QGEMM_STATUS_SHIFT,
            ErrorKind::Scale => QGEMM_STATUS_SCALE,
            ErrorKind::ZeroPoint => QGEMM_STATUS_ZERO_POINT,
            ErrorKind::Clamp => QGEMM_STATUS_CLAMP,
            ErrorKind::OutputType => QGEMM_STATUS_OUTPUT_TYPE,
            ErrorKind::WeightsMismatch => QGEMM_STATUS_WEIGHTS_MISMATCH,
            ErrorKind::IsaUnavailable => QGEMM_STATUS_ISA_UNAVAILABLE,
            ErrorKind::UnknownIsa => QGEMM_STATUS_UNKNOWN_ISA,
            ErrorKind::ConvOutputSize => QGEMM_STATUS_CONV_OUTPUT_SIZE,
            ErrorKind::Threads => QGEMM_STATUS_THREADS,
            ErrorKind::Partition => QGEMM_STATUS_PARTITION,
            ErrorKind::Task => QGEMM_STATUS_TASK,
            ErrorKind::Unsupported => QGEMM_STATUS_UNSUPPORTED,
            ErrorKind::Format => QGEMM_STATUS_FORMAT,
        };
        Failure { status, message: e.to_string() }
    }
}

fn fail<T>(status: qgemm_status, message: impl Into<String>) -> Result<T, Failure> {
    Err(Failure { status, message: message.into() })
}

thread_local! {
    /// The message of this thread's most recent failed call.
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Runs `f` inside the panic boundary, records a failure's message for this thread
/// and returns the status.
fn boundary(f: impl FnOnce() -> Result<(), Failure>) -> qgemm_status {
    let failure = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => return QGEMM_OK,
        Ok(Err(failure)) => failure,
        Err(_) => Failure {
            status: QGEMM_STATUS_PANIC,
            message: "internal error: a panic inside qgemm was caught at the C boundary".into(),
        },
    };
    LAST_ERROR.with(|last| *last.borrow_mut() = failure.message);
    failure.status
}

/// `len` elements at `ptr` as a slice; an empty slice for `len` 0 (whatever `ptr`).
///
/// # Safety
/// A non-null `ptr` with `len > 0` must point to `len` readable, initialized `T` that
/// nothing writes while the slice lives.
unsafe fn slice<'a, T>(ptr: *const T, len: usize, what: &str) -> Result<&'a [T], Failure> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return fail(QGEMM_STATUS_NULL_POINTER, format!("{what} is null with length {len}"));
    }
    if len.checked_mul(size_of::<T>()).is_none_or(|bytes| bytes > isize::MAX as usize) {
        return fail(QGEMM_STATUS_OVERFLOW, format!("{what}: length {len} exceeds the address space"));
    }
    // SAFETY: non-null, `len` elements within isize::MAX bytes (checked above), and
    // readable and unaliased by the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// As [`slice`], writable.
///
/// # Safety
/// As [`slice`], with the elements writable and not otherwise accessed while the slice
/// lives.
unsafe fn slice_mut<'a, T>(ptr: *mut T, len: usize, what: &str) -> Result<&'a mut [T], Failure> {
    if len == 0 {
        return Ok(&mut []);
    }
    if ptr.is_null() {
        return fail(QGEMM_STATUS_NULL_POINTER, format!("{what} is null with length {len}"));
    }
    if len.checked_mul(size_of::<T>()).is_none_or(|bytes| bytes > isize::MAX as usize) {
        return fail(QGEMM_STATUS_OVERFLOW, format!("{what}: length {len} exceeds the address space"));
    }
    // SAFETY: as in `slice`, and writable and exclusive by the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
}

/// `*ptr`, or a null-pointer failure.
///
/// # Safety
/// A non-null `ptr` must point to a valid `T`.
unsafe fn deref<'a, T>(ptr: *const T, what: &str) -> Result<&'a T, Failure> {
    // SAFETY: the caller's contract.
    match unsafe { ptr.as_ref() } {
        Some(v) => Ok(v),
        None => fail(QGEMM_STATUS_NULL_POINTER, format!("{what} is null")),
    }
}

fn isa_from_c(isa: qgemm_isa) -> Result<Isa, Failure> {
    match Isa::ALL.iter().copied().find(|found| isa_to_c(*found) == isa) {
        Some(found) => Ok(found),
        None => fail(QGEMM_STATUS_INVALID_ENUM, format!("ISA {isa} is not a QGEMM_ISA_* constant")),
    }
}

fn isa_to_c(isa: Isa) -> qgemm_isa {
    isa as qgemm_isa
}

/// One value per tensor (`len` 1) or per column (`len` N).
fn channelwise<T: Copy>(values: &[T], n: usize, what: &str) -> Result<Channelwise<T>, Failure> {
    match values.len() {
        1 => Ok(Channelwise::PerTensor(values[0])),
        len if len == n => Ok(Channelwise::PerChannel(values.to_vec())),
        len => fail(QGEMM_STATUS_BUFFER_LENGTH, format!("{what}: {len} values; needs 1 (per tensor) or N = {n}")),
    }
}

/// The Rust output stage of a C one, for N output columns.
///
/// # Safety
/// The stage's pointers satisfy [`slice`] for their lengths.
unsafe fn output_stage(stage: &qgemm_output_stage, n: usize) -> Result<OutputStage, Failure> {
    // SAFETY: the caller's contract, for each pointer and its length.
    let bias = unsafe { slice(stage.bias, stage.bias_len, "stage.bias")? };
    let bias = if stage.bias.is_null() && stage.bias_len == 0 { None } else { Some(bias.to_vec()) };
    let params = stage.params_len;
    let fixed = || -> Result<FixedPointParams, Failure> {
        // SAFETY: the caller's contract.
        let (multipliers, shifts) = unsafe {
            (slice(stage.multipliers, params, "stage.multipliers")?, slice(stage.shifts, params, "stage.shifts")?)
        };
        Ok(FixedPointParams::new(
            channelwise(multipliers, n, "stage.multipliers")?,
            channelwise(shifts, n, "stage.shifts")?,
        ))
    };
    let scheme = match stage.scheme {
        QGEMM_SCHEME_NONE => return Ok(OutputStage::new(bias, None)),
        QGEMM_SCHEME_FIXED_POINT => Requantization::FixedPoint(fixed()?),
        QGEMM_SCHEME_FIXED_POINT_HALF_UP => Requantization::FixedPointHalfUp(fixed()?),
        QGEMM_SCHEME_FIXED_POINT_SINGLE_ROUNDING => Requantization::FixedPointSingleRounding(fixed()?),
        QGEMM_SCHEME_FLOAT => {
            // SAFETY: the caller's contract.
            let scales = unsafe { slice(stage.scales, params, "stage.scales")? };
            Requantization::Float { scale: channelwise(scales, n, "stage.scales")? }
        }
        QGEMM_SCHEME_DEQUANTIZE => {
            // SAFETY: the caller's contract, for each pointer and its length.
            let (scales, f32_bias) = unsafe {
                (
                    slice(stage.scales, params, "stage.scales")?,
                    slice(stage.f32_bias, stage.f32_bias_len, "stage.f32_bias")?,
                )
            };
            let mut dequantize = Dequantize::new(channelwise(scales, n, "stage.scales")?);
            if !(stage.f32_bias.is_null() && stage.f32_bias_len == 0) {
                dequantize = dequantize.with_bias(f32_bias);
            }
            let mut out = OutputStage::dequantized(dequantize);
            out.bias = bias;
            return Ok(out);
        }
        other => return fail(QGEMM_STATUS_INVALID_ENUM, format!("scheme {other} is not a QGEMM_SCHEME_* constant")),
    };
    // C passes the zero point and clamp as int32_t, for either output type: they are
    // set as given and checked against the output buffer's type at the call.
    let requantize = Requantize::from_i32(scheme, stage.zero_point, stage.min, stage.max);
    Ok(OutputStage::new(bias, Some(requantize)))
}

/// The Rust view of a C output matrix.
///
/// # Safety
/// `c.data` must satisfy [`slice_mut`] for `c.data_len` elements of the type `c.type`
/// names.
unsafe fn output_matrix<'a>(c: &qgemm_output, what: &str) -> Result<OutputMatrix<'a>, Failure> {
    let field = format!("{what}.data");
    // SAFETY: the caller's contract; `c.type` says what `c.data` points to.
    let buffer = unsafe {
        match c.r#type {
            QGEMM_OUTPUT_I32 => OutputBuffer::I32(slice_mut(c.data.cast(), c.data_len, &field)?),
            QGEMM_OUTPUT_U8 => OutputBuffer::U8(slice_mut(c.data.cast(), c.data_len, &field)?),
            QGEMM_OUTPUT_I8 => OutputBuffer::I8(slice_mut(c.data.cast(), c.data_len, &field)?),
            QGEMM_OUTPUT_F32 => OutputBuffer::F32(slice_mut(c.data.cast(), c.data_len, &field)?),
            other => {
                return fail(
                    QGEMM_STATUS_INVALID_ENUM,
                    format!("{what}.type {other} is not a QGEMM_OUTPUT_* constant"),
                );
            }
        }
    };
    Ok(OutputMatrix { buffer, rows: c.rows, cols: c.cols, row_stride: c.row_stride })
}

/// Releases a handle made by `Box::into_raw`; null does nothing.
///
/// # Safety
/// `handle` must be null or such a handle, not yet freed.
unsafe fn free_handle<T>(handle: *mut T) {
    if !handle.is_null() {
        // SAFETY: a live handle from `Box::into_raw` (the caller's contract).
        let handle = unsafe { Box::from_raw(handle) };
        // Dropping frees memory (a tasks handle drops its tasks first); the boundary is
        // there all the same.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(handle)));
    }
}

/// A GEMM's arguments from C, checked and converted; they borrow the caller's buffers
/// and weights handle for `'a`.
struct GemmCall<'a> {
    activations: Activations<'a>,
    weights: &'a PackedWeights,
    stage: OutputStage,
    output: OutputMatrix<'a>,
}

/// The arguments of [`qgemm_gemm`] and its threaded and tasks forms.
///
/// # Safety
/// Each pointer is null or valid, and the buffers satisfy their lengths, for `'a`.
unsafe fn gemm_call<'a>(
    a: *const qgemm_activations,
    weights: *const qgemm_packed_weights,
    stage: *const qgemm_output_stage,
    c: *const qgemm_output,
) -> Result<GemmCall<'a>, Failure> {
    // SAFETY: the caller's contract, for each pointer.
    let (a, w, stage, c) =
        unsafe { (deref(a, "a")?, deref(weights, "weights")?, deref(stage, "stage")?, deref(c, "c")?) };
    // SAFETY: the caller's contract, for each buffer and its length.
    let data = unsafe { slice(a.data, a.data_len, "a.data")? };
    let activations = if a.signed {
        Activations::i8(bytes_as_i8(data), a.rows, a.cols, a.zero_point as i8)
    } else {
        Activations::new(data, a.rows, a.cols, a.zero_point)
    }
    .with_row_stride(a.row_stride);
    // SAFETY: as above.
    let stage = unsafe { output_stage(stage, c.cols)? };
    // SAFETY: as above.
    let output = unsafe { output_matrix(c, "c")? };
    Ok(GemmCall { activations, weights: &w.0, stage, output })
}

/// A convolution's arguments from C, checked and converted; they borrow the caller's
/// buffers and weights handle for `'a`.
struct ConvCall<'a> {
    input: ConvInput<'a>,
    weights: &'a PackedConvWeights,
    params: Conv2dParams,
    stage: OutputStage,
    output: OutputMatrix<'a>,
}

/// The arguments of [`qgemm_conv2d`] and its threaded and tasks forms.
///
/// # Safety
/// Each pointer is null or valid, and the buffers satisfy their lengths, for `'a`.
unsafe fn conv_call<'a>(
    input: *const qgemm_conv_input,
    weights: *const qgemm_packed_conv_weights,
    params: *const qgemm_conv2d_params,
    stage: *const qgemm_output_stage,
    output: *const qgemm_output,
) -> Result<ConvCall<'a>, Failure> {
    // SAFETY: the caller's contract, for each pointer.
    let (input, w, p, stage, output) = unsafe {
        (
            deref(input, "input")?,
            deref(weights, "weights")?,
            deref(params, "params")?,
            deref(stage, "stage")?,
            deref(output, "output")?,
        )
    };
    // SAFETY: the caller's contract, for each buffer and its length.
    let data = unsafe { slice(input.data, input.data_len, "input.data")? };
    // SAFETY: as above.
    let stage = unsafe { output_stage(stage, p.out_channels)? };
    // SAFETY: as above.
    let output = unsafe { output_matrix(output, "output")? };
    let input = if input.signed {
        ConvInput::i8(bytes_as_i8(data), input.zero_point as i8)
    } else {
        ConvInput::new(data, input.zero_point)
    };
    Ok(ConvCall { input, weights: &w.0, params: conv2d_params(*p), stage, output })
}

/// The library's version, as a static NUL-terminated string (`"0.1.0"`).
#[unsafe(no_mangle)]
pub extern "C" fn qgemm_version() -> *const c_char {
    const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    VERSION.as_ptr().cast()
}

/// Copies the message of this thread's most recent failed call into `buf` (at most
/// `len - 1` bytes and a NUL; nothing if `buf` is null or `len` is 0), and returns the
/// message's full length in bytes, without the NUL, so a caller can size a buffer.
/// An empty message when no call on this thread has failed.
///
/// # Safety
/// A non-null `buf` must point to `len` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qgemm_last_error_message(buf: *mut c_char, len: usize) -> usize {
    let copied = catch_unwind(AssertUnwindSafe(|| {
        LAST_ERROR.with(|last| {
            let message = last.borrow();
            if !buf.is_null() && len > 0 {
                let n = message.len().min(len - 1);
                // SAFETY: `buf` holds `len > n` writable bytes (the caller's contract).
                unsafe {
                    std::ptr::copy_nonoverlapping(message.as_ptr(), buf.cast::<u8>(), n);
                    *buf.add(n) = 0;
                }
            }
            message.len()
        })
    }));
    copied.unwrap_or(0)
}

/// Whether this CPU runs `isa` with a kernel of this build (false for values that are
/// not `QGEMM_ISA_*` constants).
#[unsafe(no_mangle)]
pub extern "C" fn qgemm_isa_available(isa: qgemm_isa) -> bool {
    catch_unwind(|| isa_from_c(isa).is_ok_and(|isa| crate::available_isas().contains(&isa))).unwrap_or(false)
}

/// The best ISA this CPU runs, ignoring any forcing.
#[unsafe(no_mangle)]
pub extern "C" fn qgemm_detected_isa() -> qgemm_isa {
    catch_unwind(|| isa_to_c(crate::detected_isa())).unwrap_or(QGEMM_ISA_PORTABLE)
}

/// Writes to `*out` the ISA that packing uses: the one forced with
/// [`qgemm_force_isa`], else the one named by `QGEMM_ISA`, else the detected one.
///
/// # Safety
/// A non-null `out` must point to a writable `qgemm_isa`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qgemm_selected_isa(out: *mut qgemm_isa) -> qgemm_status {
    boundary(|| {
        if out.is_null() {
            return fail(QGEMM_STATUS_NULL_POINTER, "out is null");
        }
        let isa = isa_to_c(crate::selected_isa()?);
        // SAFETY: `out` is non-null and writable (the caller's contract).
        unsafe { out.write(isa) };
        Ok(())
    })
}

/// Forces the ISA that weights packed from now on use; `force` false lifts the
/// forcing (and `isa` is ignored). An ISA this CPU cannot run is an error and changes
/// nothing.
#[unsafe(no_mangle)]
pub extern "C" fn qgemm_force_isa(force: bool, isa: qgemm_isa) -> qgemm_status {
    boundary(|| {
        let isa = if force { Some(isa_from_c(isa)?) } else { None };
        Ok(crate::force_isa(isa)?)
    })
}

/// Sets how long helper threads spin after each threaded call, for the whole process,
/// in microseconds: 0 makes them sleep as soon as a call's tasks are done, and times
/// above a second are taken as a second. `set` false returns to the environment
/// variable `QGEMM_SPIN_US`, else the default of 200 µs (`microseconds` is ignored).
#[unsafe(no_mangle)]
pub extern "C" fn qgemm_set_spin_time(set: bool, microseconds: u64) -> qgemm_status {
    boundary(|| {
        crate::set_spin_time(set.then(|| std::time::Duration::from_micros(microseconds)));
        Ok(())
    })
}

/// Packs `weights` for the selected ISA into a new handle, written to `*out`. Release
/// it with [`qgemm_packed_weights_free`].
///
/// # Safety
/// `weights` and `out` must be null or valid; the weights' pointers must satisfy
/// their lengths.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qgemm_packed_weights_new(
    weights: *const qgemm_weights,
    out: *mut *mut qgemm_packed_weights,
) -> qgemm_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let w = unsafe { deref(weights, "weights")? };
        if out.is_null() {
            return fail(QGEMM_STATUS_NULL_POINTER, "out is null");
        }
        let layout = match w.layout {
            QGEMM_LAYOUT_K_BY_N => WeightLayout::KxN,
            QGEMM_LAYOUT_N_BY_K => WeightLayout::NxK,
            other => {
                return fail(QGEMM_STATUS_INVALID_ENUM, format!("layout {other} is not a QGEMM_LAYOUT_* constant"));
            }
        };
        // SAFETY: the caller's contract, for each pointer and its length.
        let (data, zero_points) = unsafe {
            (
                slice(w.data, w.data_len, "weights.data")?,
                slice(w.zero_points, w.zero_points_len, "weights.zero_points")?,
            )
        };
        let packed = match w.element {
            QGEMM_WEIGHTS_I8 => {
                let zero_point = channelwise(zero_points, w.n, "weights.zero_points")?;
                PackedWeights::new(Weights::new(data, layout, w.k, w.n).with_zero_point(zero_point))?
            }
            QGEMM_WEIGHTS_U8 => {
                let (data, zero_points) = (i8_bytes(data), i8_bytes(zero_points));
                let zero_point = channelwise(zero_points, w.n, "weights.zero_points")?;
                PackedWeights::new(Weights::new(data, layout, w.k, w.n).with_zero_point(zero_point))?
            }
            element @ (QGEMM_WEIGHTS_INT4 | QGEMM_WEIGHTS_UINT4) => {
                let format = if element == QGEMM_WEIGHTS_INT4 { NibbleFormat::Int4 } else { NibbleFormat::UInt4 };
                let zero_point = channelwise(zero_points, w.n, "weights.zero_points")?;
                let weights = NibbleWeights::new(i8_bytes(data), format, layout, w.k, w.n);
                PackedWeights::new(weights.with_zero_point(zero_point))?
            }
            other => {
                return fail(QGEMM_STATUS_INVALID_ENUM, format!("element {other} is not a QGEMM_WEIGHTS_* constant"));
            }
        };
        // SAFETY: `out` is non-null and writable (the caller's contract).
        unsafe { out.write(Box::into_raw(Box::new(qgemm_packed_weights(packed)))) };
        Ok(())
    })
}

/// Releases a handle made by [`qgemm_packed_weights_new`]; null does nothing.
///
/// # Safety
/// `weights` must be null or a handle from [`qgemm_packed_weights_new`] not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qgemm_packed_weights_free(weights: *mut qgemm_packed_weights) {
    // SAFETY: the caller's contract.
    unsafe { free_handle(weights) }
}

/// The ISA a handle's weights were packed for, written to `*out`.
///
/// # Safety
/// `weights` must be null or a live handle; `out` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qgemm_packed_weights_isa(
    weights: *const qgemm_packed_weights,
    out: *mut qgemm_isa,
) -> qgemm_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let w = unsafe { deref(weights, "weights")? };
        if out.is_null() {
            return fail(QGEMM_STATUS_NULL_POINTER, "out is null");
        }
        // SAFETY: `out` is non-null and writable (the caller's contract).
        unsafe { out.write(isa_to_c(w.0.isa())) };
        Ok(())
    })
}

/// `C = stage(Σ_k (A − a_zp)(B − b_zp))` on the ISA the weights were packed for,
/// single-threaded (`qgemm::gemm`). Every argument is checked first: on error nothing
/// is written.
///
/// # Safety
/// Each pointer must be null or valid; the buffers' pointers must satisfy their
/// lengths, and the output must not overlap any input.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qgemm_gemm(
    a: *const qgemm_activations,
    weights: *const qgemm_packed_weights,
    stage: *const qgemm_output_stage,
    c: *const qgemm_output,
) -> qgemm_status {
    // SAFETY: the caller's contract, passed on.
    boundary(|| unsafe { gemm(a, weights, stage, c, 1, std::ptr::null_mut()) })
}

/// [`qgemm_gemm`] and [`qgemm_gemm_threaded`].
///
/// # Safety
/// As [`qgemm_gemm_threaded`].
unsafe fn gemm(
    a: *const qgemm_activations,
    weights: *const qgemm_packed_weights,
    stage: *const qgemm_output_stage,
    c: *const qgemm_output,
    threads: usize,
    workspace: *mut qgemm_workspace,
) -> Result<(), Failure> {
    // SAFETY: the caller's contract.
    let GemmCall { activations, weights, stage, output } = unsafe { gemm_call(a, weights, stage, c)? };
    // SAFETY: the caller's contract.
    let mut held = unsafe { threads::hold(workspace)? };
    Ok(crate::gemm_in(&activations, weights, &stage, output, &threads::options(threads), held.get())?)
}

/// Packs convolution weights for the selected ISA into a new handle, written to
/// `*out`. Release it with [`qgemm_packed_conv_weights_free`].
///
/// # Safety
/// `weights` and `out` must be null or valid; the weights' pointers must satisfy
/// their lengths.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qgemm_packed_conv_weights_new(
    weights: *const qgemm_conv_weights,
    out: *mut *mut qgemm_packed_conv_weights,
) -> qgemm_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let w = unsafe { deref(weights, "weights")? };
        if out.is_null() {
            return fail(QGEMM_STATUS_NULL_POINTER, "out is null");
        }
        let layout = match w.layout {
            QGEMM_FILTER_OHWI => FilterLayout::Ohwi,
            QGEMM_FILTER_OIHW => FilterLayout::Oihw,
            other => {
                return fail(QGEMM_STATUS_INVALID_ENUM, format!("layout {other} is not a QGEMM_FILTER_* constant"));
            }
        };
        // SAFETY: the caller's contract, for each pointer and its length.
        let (data, zero_points) = unsafe {
            (
                slice(w.data, w.data_len, "weights.data")?,
                slice(w.zero_points, w.zero_points_len, "weights.zero_points")?,
            )
        };
        // The filter shape is all that packing reads of the convolution.
        let shape = Conv2dParams::new([1, 1, 1, w.in_channels], w.out_channels, [w.kernel_height, w.kernel_width])
            .with_groups(w.groups);
        let oc = w.out_channels;
        let packed = match w.element {
            QGEMM_WEIGHTS_I8 => {
                let zero_point = channelwise(zero_points, oc, "weights.zero_points")?;
                PackedConvWeights::new(ConvWeights::new(data, &shape).with_layout(layout).with_zero_point(zero_point))?
            }
            QGEMM_WEIGHTS_U8 => {
                let zero_point = channelwise(i8_bytes(zero_points), oc, "weights.zero_points")?;
                let weights = ConvWeights::new(i8_bytes(data), &shape).with_layout(layout).with_zero_point(zero_point);
                PackedConvWeights::new(weights)?
            }
            element @ (QGEMM_WEIGHTS_INT4 | QGEMM_WEIGHTS_UINT4) => {
                let format = if element == QGEMM_WEIGHTS_INT4 { NibbleFormat::Int4 } else { NibbleFormat::UInt4 };
                let zero_point = channelwise(zero_points, oc, "weights.zero_points")?;
                let weights = NibbleConvWeights::new(i8_bytes(data), format, &shape).with_layout(layout);
                PackedConvWeights::new(weights.with_zero_point(zero_point))?
            }
            other => {
                return fail(QGEMM_STATUS_INVALID_ENUM, format!("element {other} is not a QGEMM_WEIGHTS_* constant"));
            }
        };
        // SAFETY: `out` is non-null and writable (the caller's contract).
        unsafe { out.write(Box::into_raw(Box::new(qgemm_packed_conv_weights(packed)))) };
        Ok(())
    })
}

/// Releases a handle made by [`qgemm_packed_conv_weights_new`]; null does nothing.
///
/// # Safety
/// `weights` must be null or a handle from [`qgemm_packed_conv_weights_new`] not yet
/// freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qgemm_packed_conv_weights_free(weights: *mut qgemm_packed_conv_weights) {
    // SAFETY: the caller's contract.
    unsafe { free_handle(weights) }
}

/// A convolution, single-threaded (`qgemm::conv2d`): NHWC `input`, packed `weights`,
/// the output stage per output channel, into `output` viewed as an
/// `(N·OH·OW) × OC` matrix (its row stride may exceed OC). Every argument is checked
/// first: on error nothing is written.
///
/// # Safety
/// Each pointer must be null or valid; the buffers' pointers must satisfy their
/// lengths, and the output must not overlap any input.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qgemm_conv2d(
    input: *const qgemm_conv_input,
    weights: *const qgemm_packed_conv_weights,
    params: *const qgemm_conv2d_params,
    stage: *const qgemm_output_stage,
    output: *const qgemm_output,
) -> qgemm_status {
    // SAFETY: the caller's contract, passed on.
    boundary(|| unsafe { conv2d(input, weights, params, stage, output, 1, std::ptr::null_mut()) })
}

/// [`qgemm_conv2d`] and [`qgemm_conv2d_threaded`].
///
/// # Safety
/// As [`qgemm_conv2d_threaded`].
unsafe fn conv2d(
    input: *const qgemm_conv_input,
    weights: *const qgemm_packed_conv_weights,
    params: *const qgemm_conv2d_params,
    stage: *const qgemm_output_stage,
    output: *const qgemm_output,
    threads: usize,
    workspace: *mut qgemm_workspace,
) -> Result<(), Failure> {
    // SAFETY: the caller's contract.
    let ConvCall { input, weights, params, stage, output } =
        unsafe { conv_call(input, weights, params, stage, output)? };
    // SAFETY: the caller's contract.
    let mut held = unsafe { threads::hold(workspace)? };
    Ok(crate::conv2d_in(&input, weights, &params, &stage, output, &threads::options(threads), held.get())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_stops_at_the_boundary() {
        let status = boundary(|| panic!("deliberate"));
        assert_eq!(status, QGEMM_STATUS_PANIC);
        let mut buf = [0u8; 128];
        // SAFETY: `buf` holds 128 writable bytes.
        let len = unsafe { qgemm_last_error_message(buf.as_mut_ptr().cast(), buf.len()) };
        assert!(std::str::from_utf8(&buf[..len]).unwrap().contains("panic"));
    }
}
