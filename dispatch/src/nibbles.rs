//! 4-bit weights (int4 or uint4, two per byte) as the caller holds them, and what
//! every kind of weights becomes before packing.
//!
//! **Storage.** Two values per byte, the element with the lower index in the low
//! nibble: the order of ONNX's INT4/UINT4 and PyTorch's `quint4x2`. Each row of the
//! layout (a row of K×N weights holds N values, a row of N×K ones K values, a
//! convolution's output channel all of its `KH·KW·C/groups` taps) starts on a byte, so
//! a row takes `ceil(len / 2)` bytes and an odd-length row ends in a half-used byte
//! whose high nibble is ignored. (A flat ONNX tensor of odd rows packs its rows across
//! byte boundaries instead; repack such a tensor row by row first.)
//!
//! **Arithmetic.** Exactly that of the i8 weights the nibbles unpack to (int4 in
//! [−8, 7], uint4 in [0, 15]) with their zero point (int4's in [−8, 7], uint4's in
//! [0, 15]): `acc = Σ (A − a_zp)·(W − w_zp)`, wrapping, then the same output stages.
//! Internally int4 is packed as uint4 `w + 8` with zero point `zp + 8`, which leaves
//! every `W − w_zp` as it is; the weights stay 4-bit in memory, and the kernels widen
//! them a block at a time as they use them.

use std::borrow::Cow;

use qgemm_reference::{Channelwise, Conv2dParams, WeightLayout};

use crate::conv::{ConvWeights, FilterLayout, FilterShape};
use crate::error::{Result, bail, out_of_memory};
use crate::gemm::{WeightElement, Weights, weights_as_i8, zero_point_as_i8};

/// How each 4-bit value reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NibbleFormat {
    /// Two's-complement int4, in [−8, 7] (ONNX INT4), zero point in [−8, 7].
    Int4,
    /// Unsigned uint4, in [0, 15] (ONNX UINT4, PyTorch `quint4x2`, ONNX Runtime's
    /// `MatMulNBits`), zero point in [0, 15].
    UInt4,
}

impl NibbleFormat {
    /// The range of the values and of the zero point.
    pub fn range(self) -> std::ops::RangeInclusive<i8> {
        match self {
            NibbleFormat::Int4 => -8..=7,
            NibbleFormat::UInt4 => 0..=15,
        }
    }

    fn name(self) -> &'static str {
        match self {
            NibbleFormat::Int4 => "int4",
            NibbleFormat::UInt4 => "uint4",
        }
    }
}

/// A GEMM's weight matrix B (K×N) of 4-bit values, two per byte (the element with the
/// lower index in the low nibble, each row of the layout starting on a byte), borrowed,
/// with an owned zero point:
/// [`PackedWeights::new`](crate::PackedWeights::new) packs it as it packs
/// [`Weights`], and keeps it 4-bit.
///
/// ```
/// # use qgemm::{NibbleWeights, PackedWeights};
/// // A linear layer [out_features = 2, in_features = 3] of uint4 with zero point 8:
/// // row 0 is (1, 2, 3), row 1 (4, 5, 6), each row in two bytes.
/// let bytes = [0x21, 0x03, 0x54, 0x06];
/// let packed = PackedWeights::new(NibbleWeights::uint4_nxk(&bytes, 2, 3).with_zero_point(8))?;
/// assert_eq!((packed.k(), packed.n()), (3, 2));
/// # Ok::<(), qgemm::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct NibbleWeights<'a> {
    data: &'a [u8],
    format: NibbleFormat,
    layout: WeightLayout,
    k: usize,
    n: usize,
    zero_point: Channelwise<i8>,
}

impl<'a> NibbleWeights<'a> {
    /// A K×N matrix of `format` values held in `layout`, zero point 0.
    pub fn new(data: &'a [u8], format: NibbleFormat, layout: WeightLayout, k: usize, n: usize) -> NibbleWeights<'a> {
        NibbleWeights { data, format, layout, k, n, zero_point: Channelwise::PerTensor(0) }
    }

    /// int4 weights, K rows of N values (`ceil(N / 2)` bytes each).
    pub fn int4_kxn(data: &'a [u8], k: usize, n: usize) -> NibbleWeights<'a> {
        NibbleWeights::new(data, NibbleFormat::Int4, WeightLayout::KxN, k, n)
    }

    /// int4 weights, N rows of K values (`ceil(K / 2)` bytes each): a linear layer's
    /// `[out_features, in_features]`.
    pub fn int4_nxk(data: &'a [u8], n: usize, k: usize) -> NibbleWeights<'a> {
        NibbleWeights::new(data, NibbleFormat::Int4, WeightLayout::NxK, k, n)
    }

    /// uint4 weights, K rows of N values (`ceil(N / 2)` bytes each).
    pub fn uint4_kxn(data: &'a [u8], k: usize, n: usize) -> NibbleWeights<'a> {
        NibbleWeights::new(data, NibbleFormat::UInt4, WeightLayout::KxN, k, n)
    }

    /// uint4 weights, N rows of K values (`ceil(K / 2)` bytes each), as ONNX
    /// Runtime's `MatMulNBits` holds them (one block of K per column).
    pub fn uint4_nxk(data: &'a [u8], n: usize, k: usize) -> NibbleWeights<'a> {
        NibbleWeights::new(data, NibbleFormat::UInt4, WeightLayout::NxK, k, n)
    }

    /// The same weights with a zero point per tensor or per column (a `Vec`, N
    /// values), in the format's range ([`NibbleFormat::range`]; checked at packing).
    pub fn with_zero_point(self, zero_point: impl Into<Channelwise<i8>>) -> NibbleWeights<'a> {
        NibbleWeights { zero_point: zero_point.into(), ..self }
    }

    /// The format of the values.
    pub fn format(&self) -> NibbleFormat {
        self.format
    }

    /// The layout of the data.
    pub fn layout(&self) -> WeightLayout {
        self.layout
    }

    /// K, the depth.
    pub fn k(&self) -> usize {
        self.k
    }

    /// N, the output columns.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The weight zero point.
    pub fn zero_point(&self) -> &Channelwise<i8> {
        &self.zero_point
    }
}

/// A convolution's weights of 4-bit values, two per byte, each output channel's
/// `KH·KW·C/groups` values a row of its own (`ceil(len / 2)` bytes), in OHWI order
/// unless [`with_layout`](NibbleConvWeights::with_layout) says otherwise:
/// [`PackedConvWeights::new`](crate::PackedConvWeights::new) packs them as it packs
/// [`ConvWeights`]. The GEMM paths (1×1 and general) run them; a depthwise
/// convolution runs as grouped GEMMs, not on the depthwise kernels.
#[derive(Clone, Debug)]
pub struct NibbleConvWeights<'a> {
    data: &'a [u8],
    format: NibbleFormat,
    layout: FilterLayout,
    shape: FilterShape,
    zero_point: Channelwise<i8>,
}

impl<'a> NibbleConvWeights<'a> {
    /// The `format` weights of the convolution `params`, zero point 0.
    pub fn new(data: &'a [u8], format: NibbleFormat, params: &Conv2dParams) -> NibbleConvWeights<'a> {
        NibbleConvWeights {
            data,
            format,
            layout: FilterLayout::Ohwi,
            shape: FilterShape::of(params),
            zero_point: Channelwise::PerTensor(0),
        }
    }

    /// The same weights in another order (within each output channel's row).
    pub fn with_layout(self, layout: FilterLayout) -> NibbleConvWeights<'a> {
        NibbleConvWeights { layout, ..self }
    }

    /// The same weights with a zero point per tensor or per output channel (a `Vec`,
    /// OC values), in the format's range.
    pub fn with_zero_point(self, zero_point: impl Into<Channelwise<i8>>) -> NibbleConvWeights<'a> {
        NibbleConvWeights { zero_point: zero_point.into(), ..self }
    }
}

mod sealed {
    pub trait Sealed {}
    impl<W: crate::gemm::WeightElement> Sealed for crate::Weights<'_, W> {}
    impl Sealed for crate::NibbleWeights<'_> {}
    impl<W: crate::gemm::WeightElement> Sealed for crate::ConvWeights<'_, W> {}
    impl Sealed for crate::NibbleConvWeights<'_> {}
}

/// What the elements of weights are, before packing.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Elements<'a, W: WeightElement> {
    /// One value per element.
    Bytes(&'a [W]),
    /// Two per byte, rows starting on a byte.
    Nibbles(&'a [u8], NibbleFormat),
}

/// Weights of any element type, ready to be checked and widened for packing.
#[doc(hidden)]
#[derive(Debug)]
pub struct Source<'a> {
    elements: SourceElements<'a>,
    zero_point: Channelwise<i8>,
}

#[derive(Debug)]
enum SourceElements<'a> {
    I8(&'a [i8]),
    U8(&'a [u8]),
    Nibbles(&'a [u8], NibbleFormat),
}

impl<'a> Source<'a> {
    fn new<W: WeightElement>(elements: Elements<'a, W>, zero_point: &Channelwise<W>) -> Source<'a> {
        let elements = match elements {
            Elements::Bytes(values) => match W::as_i8(values) {
                Some(values) => SourceElements::I8(values),
                // The one other element type.
                None => SourceElements::U8(W::as_u8(values).expect("i8 or u8 weights")),
            },
            Elements::Nibbles(data, format) => SourceElements::Nibbles(data, format),
        };
        Source { elements, zero_point: zero_point_as_i8(zero_point) }
    }

    /// Whether the weights are 4-bit.
    pub(crate) fn is_nibbles(&self) -> bool {
        matches!(self.elements, SourceElements::Nibbles(..))
    }

    /// The weights as `rows` rows of `cols` i8 values (row-major, in the caller's
    /// layout), with their zero point, as the kernels pack them: i8 as they are, u8 as
    /// `w − 128`, 4-bit as uint4 in [0, 15] (int4 as `w + 8`, its zero point too).
    /// `what` names the weights in errors.
    ///
    /// # Errors
    /// `BufferLength` unless the data holds exactly `rows × cols` values (4-bit: rows
    /// of `ceil(cols / 2)` bytes), `ZeroPoint` for a 4-bit zero point outside its
    /// format's range, `OutOfMemory`.
    pub(crate) fn values(&self, rows: usize, cols: usize, what: &dyn Fn() -> String) -> Result<Lowered<'a>> {
        let zero_point = &self.zero_point;
        let len = match self.elements {
            SourceElements::I8(v) => v.len(),
            SourceElements::U8(v) => v.len(),
            SourceElements::Nibbles(..) => rows * cols,
        };
        if len != rows * cols {
            bail!(BufferLength, "{}: {len} values (needs {})", what(), rows * cols);
        }
        match self.elements {
            SourceElements::I8(values) => Ok(Lowered { values: Cow::Borrowed(values), zero_point: zero_point.clone() }),
            SourceElements::U8(values) => Ok(Lowered {
                values: weights_as_i8(values).map_err(|e| out_of_memory(&what(), e))?,
                zero_point: zero_point.clone(),
            }),
            SourceElements::Nibbles(data, format) => {
                let row_bytes = cols.div_ceil(2);
                if Some(data.len()) != rows.checked_mul(row_bytes) {
                    bail!(
                        BufferLength,
                        "{}: {} bytes of {} for {rows} rows of {cols} values (needs {rows} × {row_bytes}: two values \
                         per byte, each row starting on a byte)",
                        what(),
                        data.len(),
                        format.name()
                    );
                }
                let range = format.range();
                if let Some(z) = zero_point.values().iter().find(|z| !range.contains(z)) {
                    bail!(
                        ZeroPoint,
                        "{}: zero point {z} is outside {} range [{}, {}]",
                        what(),
                        format.name(),
                        range.start(),
                        range.end()
                    );
                }
                let bias = if format == NibbleFormat::Int4 { 8 } else { 0 };
                let mut values = Vec::new();
                values.try_reserve_exact(rows * cols).map_err(|e| out_of_memory(&what(), e))?;
                for row in data.chunks_exact(row_bytes.max(1)).take(rows) {
                    for c in 0..cols {
                        let byte = row[c / 2];
                        let nibble = if c % 2 == 0 { byte & 0x0f } else { byte >> 4 };
                        // int4 `w` is `nibble` read as two's complement; `w + 8` is
                        // the nibble with its top bit flipped.
                        values.push((nibble ^ bias) as i8);
                    }
                }
                let zero_point = match zero_point {
                    Channelwise::PerTensor(z) => Channelwise::PerTensor(z + bias as i8),
                    Channelwise::PerChannel(v) => Channelwise::PerChannel(v.iter().map(|z| z + bias as i8).collect()),
                };
                Ok(Lowered { values: Cow::Owned(values), zero_point })
            }
        }
    }
}

/// Weights as the kernels pack them ([`Source::values`]).
pub(crate) struct Lowered<'a> {
    pub(crate) values: Cow<'a, [i8]>,
    pub(crate) zero_point: Channelwise<i8>,
}

/// GEMM weights before packing: their elements, layout and shape.
#[doc(hidden)]
#[derive(Debug)]
pub struct GemmSource<'a> {
    pub(crate) source: Source<'a>,
    pub(crate) layout: WeightLayout,
    pub(crate) k: usize,
    pub(crate) n: usize,
}

/// Convolution weights before packing: their elements, layout and filter shape.
#[doc(hidden)]
#[derive(Debug)]
pub struct ConvSource<'a> {
    pub(crate) source: Source<'a>,
    pub(crate) layout: FilterLayout,
    pub(crate) shape: FilterShape,
}

/// GEMM weights of any element type: [`Weights`] (i8 or u8) or [`NibbleWeights`]
/// (int4 or uint4). Sealed.
pub trait IntoWeights<'a>: sealed::Sealed {
    #[doc(hidden)]
    fn into_source(self) -> GemmSource<'a>;
}

impl<'a, W: WeightElement> IntoWeights<'a> for Weights<'a, W> {
    fn into_source(self) -> GemmSource<'a> {
        let (layout, k, n) = (self.layout(), self.k(), self.n());
        GemmSource { source: Source::new(Elements::Bytes(self.data()), self.zero_point()), layout, k, n }
    }
}

impl<'a> IntoWeights<'a> for NibbleWeights<'a> {
    fn into_source(self) -> GemmSource<'a> {
        let source = Source::new::<i8>(Elements::Nibbles(self.data, self.format), &self.zero_point);
        GemmSource { source, layout: self.layout, k: self.k, n: self.n }
    }
}

/// Convolution weights of any element type: [`ConvWeights`] (i8 or u8) or
/// [`NibbleConvWeights`] (int4 or uint4). Sealed.
pub trait IntoConvWeights<'a>: sealed::Sealed {
    #[doc(hidden)]
    fn into_source(self) -> ConvSource<'a>;
}

impl<'a, W: WeightElement> IntoConvWeights<'a> for ConvWeights<'a, W> {
    fn into_source(self) -> ConvSource<'a> {
        let (elements, layout, shape, zero_point) = self.parts();
        ConvSource { source: Source::new(Elements::Bytes(elements), &zero_point), layout, shape }
    }
}

impl<'a> IntoConvWeights<'a> for NibbleConvWeights<'a> {
    fn into_source(self) -> ConvSource<'a> {
        let source = Source::new::<i8>(Elements::Nibbles(self.data, self.format), &self.zero_point);
        ConvSource { source, layout: self.layout, shape: self.shape }
    }
}
