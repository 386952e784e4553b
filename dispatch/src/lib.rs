//! # qgemm
//!
//! Exact u8 × i8 → i32 GEMM and NHWC convolution for quantized inference, with a
//! fused output stage (bias, zero points, requantization, clamp) and u8, i8 or i32
//! output. Every kernel equals the scalar reference (`qgemm-reference`) bit for bit,
//! for every input; the semantics are documented there and in the README.
//!
//! Weights are packed once ([`PackedWeights`], [`PackedConvWeights`]) for one ISA and
//! reused across calls; each call validates its arguments and returns
//! [`Result`], never panicking on bad input and never writing the output on error.
//!
//! ```
//! use qgemm::{Activations, OutputMatrix, OutputStage, PackedWeights, Requantization, Requantize,
//!             Weights};
//!
//! // B is N×K (PyTorch/ONNX linear layout): 2 output columns, K = 3.
//! let b: [i8; 6] = [1, 2, 3, -1, -2, -3];
//! let packed = PackedWeights::new(Weights::nxk(&b, 2, 3))?;
//!
//! // A is 2×3 u8 with zero point 128.
//! let a: [u8; 6] = [129, 130, 131, 128, 128, 255];
//! let stage = OutputStage::requantized(Requantize::u8(Requantization::float(0.5), 128)).with_bias([10, 10]);
//! let mut c = [0u8; 4];
//! qgemm::gemm(&Activations::new(&a, 2, 3, 128), &packed, &stage, OutputMatrix::u8(&mut c, 2, 2))?;
//! // Row 0: (1,2,3)·(1,2,3) = 14, + 10 = 24, · 0.5 = 12, + 128 = 140; column 1: 126.
//! // Row 1: (0,0,127)·(±1,±2,±3) = ±381, + 10, · 0.5, clamped: 255 and 0.
//! assert_eq!(c, [140, 126, 255, 0]);
//! # Ok::<(), qgemm::Error>(())
//! ```
//!
//! ## Building parameters, and who owns what
//! Parameter types are `#[non_exhaustive]`: build them with their constructors and
//! `with_*` methods ([`Weights::nxk`], [`Conv2dParams::new`], [`OutputStage::requantized`],
//! [`Requantize::u8`], …), so that later versions can add fields without breaking you.
//!
//! **Tensors are borrowed, parameters are owned.** The data a call reads or writes
//! (weights to pack, activations, the input and the output) is borrowed for that call
//! only. Parameters (zero points, scales, multipliers, biases, shapes) are owned values:
//! the [`OutputStage`], the packed weights and the operators keep their own copies, so
//! nothing borrowed outlives a call. Every zero point has its tensor's element type:
//! `u8` for activations, `i8` for weights, and the output's type for
//! [`Requantize`] (`Requantize::u8(…, 128)`, `Requantize::i8(…, -3)`).
//!
//! ## Threads
//! [`Options::with_threads`] runs a call on several threads (rayon's pool with the
//! `rayon` feature, on by default); an engine with its own pool cuts a call into
//! tasks with [`GemmTasks`] or [`Conv2dTasks`] and a [`Partition`] and runs them on its
//! threads. Results are byte-identical for any thread count and any partition.
//!
//! ## From C
//! `qgemm::ffi`, with the `capi` feature (off by default), is the C ABI
//! (`include/qgemm.h`): status codes, a per-thread error message, a panic boundary on
//! every export; see the README's "Using qgemm from C". Without the feature the
//! library exports no C symbols, so two versions of qgemm link into one program.
//!
//! ## Choosing the ISA
//! [`available_isas`] lists the kernels that run on this CPU; packing uses the
//! [`selected_isa`]: the one forced with [`force_isa`], else the one named by the
//! environment variable `QGEMM_ISA`, else [`detected_isa`]. Forcing an ISA the CPU
//! lacks is an error, never an illegal instruction.

#![warn(missing_docs)]

mod batch;
mod conv;
mod error;
#[cfg(feature = "capi")]
pub mod ffi;
mod gemm;
mod isa;
mod nibbles;
mod operator;
mod parallel;
mod quant;
mod serialize;
mod spin;
mod validate;
mod workspace;

pub use batch::{GemmBatchItem, gemm_batch};
pub use conv::{
    Conv2dTasks, ConvInput, ConvPath, ConvWeights, FilterLayout, PackedConvWeights, conv2d, conv2d_in, conv2d_with,
};
pub use error::{Error, ErrorKind, Result};
pub use gemm::{
    ActivationElement, Activations, GemmTasks, Options, OutputBuffer, OutputMatrix, PackedWeights, WeightElement,
    Weights, gemm, gemm_in, gemm_with,
};
pub use isa::{Isa, KernelInfo, available_isas, detected_isa, force_isa, selected_isa};
pub use nibbles::{IntoConvWeights, IntoWeights, NibbleConvWeights, NibbleFormat, NibbleWeights};
pub use operator::{Conv2d, Linear};
pub use parallel::{MAX_THREADS, MIN_TASK_MACS, Partition, Tile};
pub use quant::{
    onnx_float_scale, onnx_requantize, quantize_bias, quantize_biases, quantize_multiplier, tflite_real_multiplier,
    tflite_requantize,
};
pub use serialize::WEIGHTS_FORMAT_VERSION;
pub use spin::{DEFAULT_SPIN_TIME, set_spin_time, spin_time};
pub use workspace::{SCRATCH_BYTES_PER_THREAD, Workspace};

/// The semantic types, shared with the reference.
pub use qgemm_reference::{
    Channelwise, Conv2dParams, Dequantize, FixedPointParams, OutputStage, OutputType, QuantizedElement, Requantization,
    Requantize, WeightLayout,
};

/// The scalar oracle, for tests and fuzzers that check results against it.
pub use qgemm_reference as reference;
