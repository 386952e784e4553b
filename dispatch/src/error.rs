//! The one error type of the public API.

use std::fmt;

/// What kind of mistake an [`Error`] reports; match on this, print the error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A dimension is invalid or inconsistent with another (rows, columns, K, N,
    /// channel counts, groups, kernel sizes, strides or dilations of a convolution).
    Dimension,
    /// A row stride is smaller than the row it must hold.
    Stride,
    /// A buffer's length does not match the shape it is given with.
    BufferLength,
    /// A size product overflows `usize`.
    Overflow,
    /// Memory for packed weights, or a call's scratch in its [`Workspace`], could not
    /// be allocated: the request is refused, not aborted, and a call's output is
    /// untouched.
    ///
    /// [`Workspace`]: crate::Workspace
    OutOfMemory,
    /// A fixed-point multiplier is neither 0 nor in `[2^30, 2^31)`.
    Multiplier,
    /// A fixed-point shift is outside `[-31, 30]`.
    Shift,
    /// A scale (or a real multiplier, or a float bias) is NaN, infinite or not positive.
    Scale,
    /// A zero point is outside the output type's range.
    ZeroPoint,
    /// A clamp is outside the output type's range, or `min > max`.
    Clamp,
    /// The output stage does not fit the output type (requantization with i32 output,
    /// or none with u8/i8 output).
    OutputType,
    /// Packed weights were made for another shape or another ISA.
    WeightsMismatch,
    /// The ISA asked for cannot run: this CPU lacks it, or this build has no kernel for it.
    IsaUnavailable,
    /// An ISA name (`QGEMM_ISA` or `Isa::from_str`) is not known.
    UnknownIsa,
    /// A convolution's kernel does not fit its padded input.
    ConvOutputSize,
    /// The number of threads is zero or above [`MAX_THREADS`](crate::MAX_THREADS).
    Threads,
    /// A [`Partition::Grid`](crate::Partition::Grid)'s bounds do not run from 0 to the
    /// output's rows or columns, or decrease.
    Partition,
    /// A task index past the last task of a call, or a task that already ran.
    Task,
    /// A parameter value this build does not support (a requantization scheme or an
    /// output type added to the shared types that this entry point does not take).
    Unsupported,
    /// Serialized weights are not a valid qgemm weights file: wrong magic, another
    /// format version, a checksum mismatch (corruption or truncation), or fields that
    /// do not fit together.
    Format,
}

/// An invalid argument, with a message that names the parameter and its values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error { kind, message: message.into() }
    }

    /// The kind of mistake.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message alone (the same text `Display` prints).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// The result type of every fallible function of the API.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shorthand for an early `return Err(..)` with a formatted message.
macro_rules! bail {
    ($kind:ident, $($fmt:tt)+) => {
        return Err($crate::error::Error::new($crate::error::ErrorKind::$kind, format!($($fmt)+)))
    };
}
pub(crate) use bail;

/// The error for a refused allocation of packed data.
pub(crate) fn out_of_memory(what: &str, e: std::collections::TryReserveError) -> Error {
    Error::new(ErrorKind::OutOfMemory, format!("{what}: cannot allocate the packed data ({e})"))
}
