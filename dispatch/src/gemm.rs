//! GEMM: packed weights, the matrices of a call, and the entry points.

use std::mem::MaybeUninit;
use std::time::Duration;

use qgemm_kernels::Kernel;
use qgemm_kernels::driver::{self, GemmArgs, Scratch, ScratchNeeds};
use qgemm_kernels::indirect::{self, IndirectGemm, Plan};
use qgemm_kernels::output::{OutData, OutView, OutputStage as LoweredStage};
use qgemm_kernels::pack::{BLayout, PackedB};
use qgemm_kernels::rows::{ConvGeometry, Im2col, Rows};
use qgemm_reference::{Channelwise, OutputStage, OutputType, WeightLayout};

use crate::error::{Result, bail, out_of_memory};
use crate::isa::{Isa, KernelInfo, kernel_for_rows, kernel_for_weights, selected_isa};
use crate::nibbles::{GemmSource, IntoWeights, Lowered};
use crate::parallel::{Grid, Partition, Shape, Tile, run_tasks};
use crate::validate::{Dequant, check_matrix, check_weight_zero_points, dequant, output_stage, product};
use crate::workspace::Workspace;

/// The weight matrix B (K×N, `i8`, or `u8` as MLAS's U8U8 takes it) as the caller
/// holds it, before packing: borrowed data, its layout and shape, and an owned zero
/// point of the weights' own type (0 per tensor unless set).
///
/// ```
/// # use qgemm::Weights;
/// let w = [1i8, 2, 3, 4, 5, 6];
/// // A linear layer's weight tensor [out_features = 2, in_features = 3]: N×K.
/// let linear = Weights::nxk(&w, 2, 3).with_zero_point(vec![0, -1]);
/// // The same values read as a 2×3 (K×N) matrix, zero point 3 for every column.
/// let kxn = Weights::kxn(&w, 2, 3).with_zero_point(3);
/// // u8 weights with a u8 zero point.
/// let unsigned = Weights::kxn(&[200u8, 0, 255, 128, 7, 9], 2, 3).with_zero_point(128u8);
/// # let _ = (linear, kxn, unsigned);
/// ```
#[derive(Clone, Debug)]
pub struct Weights<'a, W: WeightElement = i8> {
    data: &'a [W],
    layout: WeightLayout,
    k: usize,
    n: usize,
    zero_point: Channelwise<W>,
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for i8 {}
    impl Sealed for u8 {}
}

/// The element types weights can have: `i8`, and `u8` (sealed). `u8` weights with a
/// `u8` zero point are packed as `w − 128` with zero point `zp − 128`, which leaves
/// every difference `w − zp`, so every result, exactly as it was.
pub trait WeightElement: Copy + std::fmt::Debug + sealed::Sealed {
    /// 0, the default zero point.
    const ZERO: Self;
    /// The value as the kernels take it: itself for `i8`, `x − 128` for `u8`.
    fn to_i8(self) -> i8;
    /// `values` themselves where they are i8 already.
    #[doc(hidden)]
    fn as_i8(values: &[Self]) -> Option<&[i8]> {
        let _ = values;
        None
    }
    /// `values` themselves where they are u8.
    #[doc(hidden)]
    fn as_u8(values: &[Self]) -> Option<&[u8]> {
        let _ = values;
        None
    }
}

impl WeightElement for i8 {
    const ZERO: i8 = 0;
    fn to_i8(self) -> i8 {
        self
    }
    fn as_i8(values: &[i8]) -> Option<&[i8]> {
        Some(values)
    }
}

impl WeightElement for u8 {
    const ZERO: u8 = 0;
    fn to_i8(self) -> i8 {
        (self ^ 0x80) as i8
    }
    fn as_u8(values: &[u8]) -> Option<&[u8]> {
        Some(values)
    }
}

/// The element types activations can have: `u8`, and `i8` (sealed); see
/// [`Activations::new`] and [`Activations::i8`].
pub trait ActivationElement: Copy + std::fmt::Debug + Send + Sync + sealed::Sealed + 'static {
    /// The activations `data`, a dense `rows × cols` matrix with zero point
    /// `zero_point`.
    fn activations(data: &[Self], rows: usize, cols: usize, zero_point: Self) -> Activations<'_>;
    /// A convolution's NHWC input `data` with zero point `zero_point`.
    fn conv_input(data: &[Self], zero_point: Self) -> crate::ConvInput<'_>;
}

impl ActivationElement for u8 {
    fn activations(data: &[u8], rows: usize, cols: usize, zero_point: u8) -> Activations<'_> {
        Activations::new(data, rows, cols, zero_point)
    }
    fn conv_input(data: &[u8], zero_point: u8) -> crate::ConvInput<'_> {
        crate::ConvInput::new(data, zero_point)
    }
}

impl ActivationElement for i8 {
    fn activations(data: &[i8], rows: usize, cols: usize, zero_point: i8) -> Activations<'_> {
        Activations::i8(data, rows, cols, zero_point)
    }
    fn conv_input(data: &[i8], zero_point: i8) -> crate::ConvInput<'_> {
        crate::ConvInput::i8(data, zero_point)
    }
}

/// The bytes of i8 values, as u8.
pub(crate) fn i8_bytes(values: &[i8]) -> &[u8] {
    // SAFETY: i8 and u8 have the same size, alignment and validity (every bit
    // pattern); the result borrows `values`.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast(), values.len()) }
}

/// u8 bytes read as i8 values (the C ABI's `uint8_t` buffers that hold i8).
#[cfg(feature = "capi")]
pub(crate) fn bytes_as_i8(bytes: &[u8]) -> &[i8] {
    // SAFETY: as in `i8_bytes`.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast(), bytes.len()) }
}

/// `values` as i8 (`Cow::Borrowed` for i8 itself), or an allocation error.
pub(crate) fn weights_as_i8<W: WeightElement>(
    values: &[W],
) -> std::result::Result<std::borrow::Cow<'_, [i8]>, std::collections::TryReserveError> {
    if let Some(same) = W::as_i8(values) {
        return Ok(std::borrow::Cow::Borrowed(same));
    }
    let mut v = Vec::new();
    v.try_reserve_exact(values.len())?;
    v.extend(values.iter().map(|w| w.to_i8()));
    Ok(std::borrow::Cow::Owned(v))
}

/// A zero point as i8, per tensor or per channel.
pub(crate) fn zero_point_as_i8<W: WeightElement>(zp: &Channelwise<W>) -> Channelwise<i8> {
    match zp {
        Channelwise::PerTensor(z) => Channelwise::PerTensor(z.to_i8()),
        Channelwise::PerChannel(v) => Channelwise::PerChannel(v.iter().map(|z| z.to_i8()).collect()),
    }
}

impl<'a, W: WeightElement> Weights<'a, W> {
    /// A K×N matrix held in `layout`, zero point 0: the general form of
    /// [`kxn`](Weights::kxn) and [`nxk`](Weights::nxk).
    pub fn new(data: &'a [W], layout: WeightLayout, k: usize, n: usize) -> Weights<'a, W> {
        Weights { data, layout, k, n, zero_point: Channelwise::PerTensor(W::ZERO) }
    }

    /// K rows of N weights, row-major: `B[k][n]` is at `data[k * n + n]`.
    pub fn kxn(data: &'a [W], k: usize, n: usize) -> Weights<'a, W> {
        Weights::new(data, WeightLayout::KxN, k, n)
    }

    /// N rows of K weights, row-major (the PyTorch/ONNX linear-weight layout
    /// `[out_features, in_features]`): `B[k][n]` is at `data[n * k_total + k]`.
    pub fn nxk(data: &'a [W], n: usize, k: usize) -> Weights<'a, W> {
        Weights::new(data, WeightLayout::NxK, k, n)
    }

    /// The same weights with a zero point of their type per tensor (`i8` or `u8`) or
    /// per column (a `Vec`, N values).
    pub fn with_zero_point(self, zero_point: impl Into<Channelwise<W>>) -> Weights<'a, W> {
        Weights { zero_point: zero_point.into(), ..self }
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
    pub fn zero_point(&self) -> &Channelwise<W> {
        &self.zero_point
    }

    pub(crate) fn data(&self) -> &'a [W] {
        self.data
    }
}

/// Weights packed once for one ISA's kernel and reused across calls: the panels, the
/// per-column offsets (`K·b_zp − Σ_k B`) that compensate the activation zero point, the ISA, K and N.
#[derive(Clone, Debug)]
pub struct PackedWeights {
    isa: Isa,
    kernel: &'static Kernel,
    packed: PackedB,
}

impl PackedWeights {
    /// Packs `weights` ([`Weights`] of i8 or u8, or 4-bit [`NibbleWeights`](crate::NibbleWeights)) for the
    /// [selected ISA](crate::selected_isa). 4-bit weights stay 4-bit in memory.
    ///
    /// # Errors
    /// If the data does not hold K·N values (4-bit: rows of two per byte), a size
    /// overflows, the per-column zero points are not N, a 4-bit zero point is outside
    /// its format's range, the packed data cannot be allocated, or `QGEMM_ISA` is
    /// invalid.
    pub fn new<'a>(weights: impl IntoWeights<'a>) -> Result<PackedWeights> {
        PackedWeights::for_isa(selected_isa()?, weights)
    }

    /// Packs `weights` for `isa`.
    ///
    /// # Errors
    /// As [`new`](Self::new), and if `isa` cannot run on this CPU.
    pub fn for_isa<'a>(isa: Isa, weights: impl IntoWeights<'a>) -> Result<PackedWeights> {
        let GemmSource { source, layout, k, n } = weights.into_source();
        let kernel = kernel_for_weights(isa, k, n, None)?;
        let len = product("weights K·N", &[k, n])?;
        let (rows, cols) = match layout {
            WeightLayout::KxN => (k, n),
            WeightLayout::NxK => (n, k),
        };
        let what = || format!("weights K = {k} × N = {n}");
        let Lowered { values: data, zero_point } = source.values(rows, cols, &what)?;
        debug_assert_eq!(data.len(), len);
        check_weight_zero_points(&zero_point, n)?;
        let tile = kernel.tile();
        // The packed size: panels of nr columns, K rounded up to the K step.
        let step = if source.is_nibbles() { PackedB::nibble_k_step(tile) } else { tile.k_step() };
        let kp = k.checked_next_multiple_of(step);
        let cols = n.checked_next_multiple_of(tile.nr);
        match (kp, cols) {
            (Some(kp), Some(cols)) => product("packed weights", &[kp, cols])?,
            _ => bail!(Overflow, "weights: K = {k} or N = {n} overflows when padded to the tile"),
        };
        let layout = match layout {
            WeightLayout::KxN => BLayout::KxN,
            WeightLayout::NxK => BLayout::NxK,
        };
        let pack = if source.is_nibbles() { PackedB::try_new_nibbles } else { PackedB::try_new };
        let packed = pack(tile, &data, layout, k, n, zero_point.values()).map_err(|e| out_of_memory(&what(), e))?;
        Ok(PackedWeights { isa, kernel, packed })
    }

    /// Whether the weights are kept 4-bit ([`NibbleWeights`](crate::NibbleWeights)).
    pub fn is_4_bit(&self) -> bool {
        self.packed.is_nibbles()
    }

    /// The ISA the weights were packed for; GEMMs with them run on it.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The microkernel the weights were packed for: the ISA's, or a sibling with a
    /// tile that fits N better (see [`Isa::kernel_info`]), or for weights too shallow
    /// for AMX's tiles (K < 128), AVX-512 VNNI's.
    pub fn kernel_info(&self) -> KernelInfo {
        KernelInfo::of(self.kernel, self.isa).expect("packed for an available ISA")
    }

    /// K, the depth.
    pub fn k(&self) -> usize {
        self.packed.k()
    }

    /// N, the number of output columns.
    pub fn n(&self) -> usize {
        self.packed.n()
    }

    /// Bytes of packed data held.
    pub fn heap_size(&self) -> usize {
        self.packed.heap_size()
    }

    pub(crate) fn kernel(&self) -> &'static Kernel {
        self.kernel
    }

    pub(crate) fn packed(&self) -> &PackedB {
        &self.packed
    }
}

/// The activation matrix A (M×K, row-major) of one call: u8 with a u8 zero point
/// ([`Activations::new`]), or i8 with an i8 zero point ([`Activations::i8`], as ONNX
/// Runtime's and XNNPACK's s8 × s8 take them).
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Activations<'a> {
    /// `A[m][k]` is at `data[m * row_stride + k]`: the values, or for i8 activations
    /// their bytes.
    pub data: &'a [u8],
    /// M.
    pub rows: usize,
    /// K.
    pub cols: usize,
    /// Distance between rows, `>= cols`.
    pub row_stride: usize,
    /// The activation zero point (for i8 activations, its byte: see `signed`).
    pub zero_point: u8,
    /// Whether `data` and `zero_point` hold i8 values ([`Activations::i8`]). They are
    /// computed as the u8 values `a + 128` with the zero point `zp + 128`, which
    /// leaves every difference `a − zp`, so every result, exactly as it is.
    pub signed: bool,
}

impl<'a> Activations<'a> {
    /// A dense `rows × cols` matrix of u8 values.
    pub fn new(data: &'a [u8], rows: usize, cols: usize, zero_point: u8) -> Activations<'a> {
        Activations { data, rows, cols, row_stride: cols, zero_point, signed: false }
    }

    /// A dense `rows × cols` matrix of i8 values with an i8 zero point (GEMMs and
    /// [`Linear`](crate::Linear); convolutions take u8 input).
    ///
    /// ```
    /// # use qgemm::{Activations, OutputMatrix, OutputStage, PackedWeights, Weights};
    /// let w = PackedWeights::new(Weights::kxn(&[1i8, -1], 2, 1))?;
    /// let mut c = [0i32; 1];
    /// let a = Activations::i8(&[-128, 127], 1, 2, -3);
    /// qgemm::gemm(&a, &w, &OutputStage::i32(), OutputMatrix::i32(&mut c, 1, 1))?;
    /// assert_eq!(c, [(-128 + 3) - (127 + 3)]);
    /// # Ok::<(), qgemm::Error>(())
    /// ```
    pub fn i8(data: &'a [i8], rows: usize, cols: usize, zero_point: i8) -> Activations<'a> {
        Activations { data: i8_bytes(data), rows, cols, row_stride: cols, zero_point: zero_point as u8, signed: true }
    }

    /// The same matrix with rows `row_stride` elements apart.
    pub fn with_row_stride(self, row_stride: usize) -> Activations<'a> {
        Activations { row_stride, ..self }
    }

    /// The rows as the kernels read them (u8 values), from row `first` on.
    fn rows_from(&self, first: usize) -> Rows<'a> {
        let data = self.data.get(first * self.row_stride..).unwrap_or(&[]);
        if self.signed {
            Rows::Flipped { data, stride: self.row_stride }
        } else {
            Rows::Matrix { data, stride: self.row_stride }
        }
    }

    /// The zero point of the u8 values the kernels read.
    fn kernel_zero_point(&self) -> u8 {
        if self.signed { self.zero_point ^ 0x80 } else { self.zero_point }
    }
}

/// An output buffer of one element type. Non-exhaustive: later versions may add types.
#[derive(Debug)]
#[non_exhaustive]
pub enum OutputBuffer<'a> {
    /// i32 output: the output stage must not requantize.
    I32(&'a mut [i32]),
    /// u8 output: the output stage must requantize.
    U8(&'a mut [u8]),
    /// i8 output: the output stage must requantize.
    I8(&'a mut [i8]),
    /// f32 output: the output stage must dequantize.
    F32(&'a mut [f32]),
    /// Uninitialized u8 output ([`OutputMatrix::u8_uninit`]).
    U8Uninit(&'a mut [MaybeUninit<u8>]),
    /// Uninitialized i8 output.
    I8Uninit(&'a mut [MaybeUninit<i8>]),
    /// Uninitialized i32 output.
    I32Uninit(&'a mut [MaybeUninit<i32>]),
    /// Uninitialized f32 output.
    F32Uninit(&'a mut [MaybeUninit<f32>]),
}

/// The output matrix C (M×N, row-major) of one call. Only the `rows × cols` elements
/// are written; the gaps between rows (when `row_stride > cols`) are left untouched.
/// Build one with [`OutputMatrix::u8`], [`i8`](OutputMatrix::i8) or
/// [`i32`](OutputMatrix::i32).
#[derive(Debug)]
#[non_exhaustive]
pub struct OutputMatrix<'a> {
    /// The elements; `C[m][n]` is at `m * row_stride + n`.
    pub buffer: OutputBuffer<'a>,
    /// M.
    pub rows: usize,
    /// N.
    pub cols: usize,
    /// Distance between rows, `>= cols`.
    pub row_stride: usize,
}

impl<'a> OutputMatrix<'a> {
    /// A dense u8 output.
    pub fn u8(data: &'a mut [u8], rows: usize, cols: usize) -> OutputMatrix<'a> {
        OutputMatrix::dense(OutputBuffer::U8(data), rows, cols)
    }

    /// A dense i8 output.
    pub fn i8(data: &'a mut [i8], rows: usize, cols: usize) -> OutputMatrix<'a> {
        OutputMatrix::dense(OutputBuffer::I8(data), rows, cols)
    }

    /// A dense i32 output.
    pub fn i32(data: &'a mut [i32], rows: usize, cols: usize) -> OutputMatrix<'a> {
        OutputMatrix::dense(OutputBuffer::I32(data), rows, cols)
    }

    /// A dense f32 output (the stage must dequantize: [`OutputStage::dequantized`]).
    pub fn f32(data: &'a mut [f32], rows: usize, cols: usize) -> OutputMatrix<'a> {
        OutputMatrix::dense(OutputBuffer::F32(data), rows, cols)
    }

    /// A dense u8 output in uninitialized memory (a `Vec::spare_capacity_mut`, say).
    /// After a successful call its `rows × cols` elements are initialized; the gaps
    /// between rows stay as they were. qgemm first writes the window once with zeros,
    /// then computes into it (a pass over the output, not over K).
    pub fn u8_uninit(data: &'a mut [MaybeUninit<u8>], rows: usize, cols: usize) -> OutputMatrix<'a> {
        OutputMatrix::dense(OutputBuffer::U8Uninit(data), rows, cols)
    }

    /// A dense i8 output in uninitialized memory; see [`u8_uninit`](Self::u8_uninit).
    pub fn i8_uninit(data: &'a mut [MaybeUninit<i8>], rows: usize, cols: usize) -> OutputMatrix<'a> {
        OutputMatrix::dense(OutputBuffer::I8Uninit(data), rows, cols)
    }

    /// A dense i32 output in uninitialized memory; see [`u8_uninit`](Self::u8_uninit).
    pub fn i32_uninit(data: &'a mut [MaybeUninit<i32>], rows: usize, cols: usize) -> OutputMatrix<'a> {
        OutputMatrix::dense(OutputBuffer::I32Uninit(data), rows, cols)
    }

    /// A dense f32 output in uninitialized memory; see [`u8_uninit`](Self::u8_uninit).
    pub fn f32_uninit(data: &'a mut [MaybeUninit<f32>], rows: usize, cols: usize) -> OutputMatrix<'a> {
        OutputMatrix::dense(OutputBuffer::F32Uninit(data), rows, cols)
    }

    fn dense(buffer: OutputBuffer<'a>, rows: usize, cols: usize) -> OutputMatrix<'a> {
        OutputMatrix { buffer, rows, cols, row_stride: cols }
    }

    /// The same output with rows `row_stride` elements apart.
    pub fn with_row_stride(self, row_stride: usize) -> OutputMatrix<'a> {
        OutputMatrix { row_stride, ..self }
    }

    /// The element type.
    pub fn output_type(&self) -> OutputType {
        match self.buffer {
            OutputBuffer::I32(_) => OutputType::I32,
            OutputBuffer::U8(_) => OutputType::U8,
            OutputBuffer::I8(_) => OutputType::I8,
            OutputBuffer::F32(_) => OutputType::F32,
            OutputBuffer::U8Uninit(_) => OutputType::U8,
            OutputBuffer::I8Uninit(_) => OutputType::I8,
            OutputBuffer::I32Uninit(_) => OutputType::I32,
            OutputBuffer::F32Uninit(_) => OutputType::F32,
        }
    }

    pub(crate) fn len(&self) -> usize {
        match &self.buffer {
            OutputBuffer::I32(d) => d.len(),
            OutputBuffer::U8(d) => d.len(),
            OutputBuffer::I8(d) => d.len(),
            OutputBuffer::F32(d) => d.len(),
            OutputBuffer::U8Uninit(d) => d.len(),
            OutputBuffer::I8Uninit(d) => d.len(),
            OutputBuffer::I32Uninit(d) => d.len(),
            OutputBuffer::F32Uninit(d) => d.len(),
        }
    }

    pub(crate) fn check(&self) -> Result<()> {
        check_matrix("output", self.len(), self.rows, self.cols, self.row_stride)
    }

    /// The output as the kernels' view of it.
    ///
    /// # Panics
    /// Unless [`check`](OutputMatrix::check) accepted it.
    pub(crate) fn into_out_data(self) -> OutData<'a> {
        let OutputMatrix { buffer, rows, cols, row_stride } = self;
        match buffer {
            OutputBuffer::I32(d) => OutData::I32(OutView::new(d, rows, cols, row_stride)),
            OutputBuffer::U8(d) => OutData::U8(OutView::new(d, rows, cols, row_stride)),
            OutputBuffer::I8(d) => OutData::I8(OutView::new(d, rows, cols, row_stride)),
            OutputBuffer::F32(d) => {
                // The kernels store i32 accumulators into the f32 buffer's memory; each
                // tile is then dequantized in place (`Dequant::apply`).
                let len = d.len();
                // SAFETY: i32 and f32 have the same size and alignment and every bit
                // pattern is valid for both; the unique borrow of `d` moves into the
                // slice, which spans exactly its elements.
                let d = unsafe { std::slice::from_raw_parts_mut(d.as_mut_ptr().cast::<i32>(), len) };
                OutData::I32(OutView::new(d, rows, cols, row_stride))
            }
            OutputBuffer::U8Uninit(d) => OutData::U8(initialized_window(d, rows, cols, row_stride, 0)),
            OutputBuffer::I8Uninit(d) => OutData::I8(initialized_window(d, rows, cols, row_stride, 0)),
            OutputBuffer::I32Uninit(d) => OutData::I32(initialized_window(d, rows, cols, row_stride, 0)),
            OutputBuffer::F32Uninit(d) => {
                // As for `F32`: i32 accumulators first, in the f32 elements' memory.
                let len = d.len();
                // SAFETY: MaybeUninit<f32> and MaybeUninit<i32> have the same size and
                // alignment, and any contents are valid for both; the unique borrow of
                // `d` moves into the slice, which spans exactly its elements.
                let d = unsafe { std::slice::from_raw_parts_mut(d.as_mut_ptr().cast::<MaybeUninit<i32>>(), len) };
                OutData::I32(initialized_window(d, rows, cols, row_stride, 0))
            }
        }
    }
}

/// The `rows × cols` window of `data` (rows `stride` apart) written with `zero`, as
/// a view: its elements are initialized, the gaps between rows are not touched (nor
/// ever reached through the view).
///
/// # Panics
/// If the window does not fit in `data` ([`OutputMatrix::check`] rules that out).
fn initialized_window<T: Copy>(
    data: &mut [MaybeUninit<T>],
    rows: usize,
    cols: usize,
    stride: usize,
    zero: T,
) -> OutView<'_, T> {
    if cols > 0 {
        for r in 0..rows {
            data[r * stride..][..cols].fill(MaybeUninit::new(zero));
        }
    }
    // The window's elements (r · stride + c, r < rows, c < cols) lie in `data` (the
    // slicing above checked it); the unique borrow of `data` moves into the view.
    // SAFETY: those elements have just been initialized; the view reaches no other.
    unsafe { OutView::from_raw_parts(data.as_mut_ptr().cast::<T>(), rows, cols, stride) }
}

/// How a call runs. Build it with [`Options::new`] and the `with_` methods; fields may
/// be added in later versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Options {
    /// Threads to run on (the calling thread included), `1..=`[`MAX_THREADS`]; 1 by
    /// default (a count outside is an [`ErrorKind::Threads`] error). Results
    /// are identical for any thread count. The call is cut by
    /// [`Partition::Auto`](crate::Partition::Auto), so a small problem uses fewer
    /// threads. The other threads come from rayon with the `rayon` feature (on by
    /// default): from the pool the call is made on (inside `ThreadPool::install`, or on
    /// one of its threads), else from the global pool; without the feature they are OS
    /// threads. Helpers spin for the [spin time](Options::with_spin_time) after the
    /// call. An engine with a pool of another kind drives [`GemmTasks`] and
    /// [`Conv2dTasks`](crate::Conv2dTasks) instead.
    ///
    /// [`MAX_THREADS`]: crate::MAX_THREADS
    /// [`ErrorKind::Threads`]: crate::ErrorKind::Threads
    pub threads: usize,
    /// When set, the call fails unless the weights were packed for this ISA.
    pub isa: Option<Isa>,
    /// How long the helper threads spin after this call for the next one (0: they
    /// sleep at once); `None` takes the process's [`spin_time`](crate::spin_time).
    pub spin: Option<Duration>,
}

impl Default for Options {
    fn default() -> Options {
        Options { threads: 1, isa: None, spin: None }
    }
}

impl Options {
    /// One thread, any ISA.
    pub fn new() -> Options {
        Options::default()
    }

    /// The same options with `threads` threads.
    pub fn with_threads(self, threads: usize) -> Options {
        Options { threads, ..self }
    }

    /// The same options, requiring weights packed for `isa`.
    pub fn with_isa(self, isa: Isa) -> Options {
        Options { isa: Some(isa), ..self }
    }

    /// The same options, with the helper threads spinning for `spin` after the call
    /// (`Duration::ZERO`: they sleep at once; at most a second). See
    /// [`set_spin_time`](crate::set_spin_time) for the process-wide setting.
    pub fn with_spin_time(self, spin: Duration) -> Options {
        Options { spin: Some(spin), ..self }
    }
}

impl Options {
    /// The call's threads and its helpers' spin time (see [`crate::spin`]).
    pub(crate) fn run_threads(&self) -> crate::parallel::Threads {
        crate::parallel::Threads { count: self.threads, spin_ns: crate::spin::for_call(self.spin) }
    }

    pub(crate) fn check(&self, weights_isa: Isa) -> Result<()> {
        crate::parallel::check_threads(self.threads, "options.threads")?;
        if let Some(isa) = self.isa
            && isa != weights_isa
        {
            bail!(WeightsMismatch, "options.isa = {isa}, but the weights were packed for {weights_isa}");
        }
        Ok(())
    }
}

/// `C = stage(Σ_k (A − a_zp)(B − b_zp))`, single-threaded, on the ISA the weights were
/// packed for. See [`gemm_with`].
pub fn gemm(a: &Activations<'_>, b: &PackedWeights, stage: &OutputStage, c: OutputMatrix<'_>) -> Result<()> {
    gemm_with(a, b, stage, c, &Options::default())
}

/// `C = stage(Σ_k (A − a_zp)(B − b_zp))` with explicit [`Options`] (threads, ISA).
///
/// Every argument is checked before anything is written: on error the output is
/// untouched. `M = 0` or `N = 0` does nothing; `K = 0` gives the bias alone (then
/// requantized).
///
/// # Errors
/// A shape that disagrees between A, the weights and C; a buffer too short for its
/// shape and stride; a stride below its row length; an invalid output stage (bias or
/// per-channel lengths, multiplier, shift, scale, zero point, clamp, or a stage that
/// does not fit C's element type); zero threads, or more than
/// [`MAX_THREADS`](crate::MAX_THREADS); weights packed for another ISA than
/// `options.isa`; or scratch that could not be allocated
/// ([`ErrorKind::OutOfMemory`](crate::ErrorKind::OutOfMemory)).
pub fn gemm_with(
    a: &Activations<'_>,
    b: &PackedWeights,
    stage: &OutputStage,
    c: OutputMatrix<'_>,
    options: &Options,
) -> Result<()> {
    gemm_in(a, b, stage, c, options, &mut Workspace::new())
}

/// [`gemm_with`] in a caller-owned [`Workspace`], so that repeated calls allocate
/// nothing once it has grown (at most
/// [`SCRATCH_BYTES_PER_THREAD`](crate::SCRATCH_BYTES_PER_THREAD) per thread).
///
/// # Errors
/// As [`gemm_with`].
pub fn gemm_in(
    a: &Activations<'_>,
    b: &PackedWeights,
    stage: &OutputStage,
    c: OutputMatrix<'_>,
    options: &Options,
    workspace: &mut Workspace,
) -> Result<()> {
    options.check(b.isa())?;
    let partition = Partition::auto(options.threads);
    let tasks = GemmTasks::new(a, b, stage, c, &partition)?;
    run_tasks(tasks.len(), options.run_threads(), workspace, &tasks.scratch_needs(), &|i, scratch| {
        tasks.run_in(i, scratch)
    })
}

/// One GEMM, checked and cut into tasks by a [`Partition`], for an engine that runs
/// the tasks on its own threads (ONNX Runtime-style pools, pthreadpool) rather than
/// through [`Options::threads`].
///
/// Run each task `0..len()` once, on any thread and in any order, each thread with its
/// own [`Workspace`]; the output is complete once all have run, and byte-identical to
/// [`gemm`]'s whatever the partition. The tasks are `Sync`: share them by reference.
///
/// ```
/// use qgemm::{Activations, GemmTasks, OutputMatrix, OutputStage, PackedWeights, Partition,
///             Weights, Workspace};
///
/// let (m, k, n) = (40, 64, 30);
/// let b: Vec<i8> = (0..k * n).map(|i| (i % 7) as i8 - 3).collect();
/// let packed = PackedWeights::new(Weights::kxn(&b, k, n))?;
/// let a: Vec<u8> = (0..m * k).map(|i| (i % 251) as u8).collect();
/// let stage = OutputStage::i32();
/// let mut c = vec![0i32; m * n];
///
/// // Rows 0..13 and 13..40 by columns 0..7 and 7..30: four tasks.
/// let partition = Partition::grid([0, 13, 40], [0, 7, 30]);
/// let tasks = GemmTasks::new(&Activations::new(&a, m, k, 128), &packed, &stage, OutputMatrix::i32(&mut c, m, n), &partition)?;
/// std::thread::scope(|s| {
///     for i in 0..tasks.len() {
///         let tasks = &tasks;
///         s.spawn(move || tasks.run(i, &mut Workspace::new()));
///     }
/// });
/// # drop(tasks);
/// # let mut whole = vec![0i32; m * n];
/// # qgemm::gemm(&Activations::new(&a, m, k, 128), &packed, &stage, OutputMatrix::i32(&mut whole, m, n))?;
/// # assert_eq!(c, whole);
/// # Ok::<(), qgemm::Error>(())
/// ```
#[derive(Debug)]
pub struct GemmTasks<'a> {
    a: Activations<'a>,
    kernel: &'static Kernel,
    b: &'a PackedB,
    stage: LoweredStage<'a>,
    out: OutData<'a>,
    grid: Grid<'a>,
    /// A read in place ([`indirect_plan`]), or packed.
    indirect: Option<(ConvGeometry, Plan)>,
    /// For f32 output: applied to each tile after the kernel.
    dequant: Option<Dequant<'a>>,
}

/// The deepest GEMM that reads A in place: its tiles keep their sums over all of K
/// (no K blocks), so a B panel of `K × NR` bytes streams through L1 per tile, and the
/// row blocks shrink as K grows (the offsets and worst-case copies share packed A's
/// room). Against packing A, on an AMD EPYC (Zen 4, AVX-512 VNNI), 1 thread: +8% at
/// 256³, +9% at 1024³, +8% at 2048³, +6% at 128×3072×768, +10–12% at K = 4096.
const INDIRECT_MAX_K: usize = 4096;

/// How a GEMM reads A in place, as a 1×1 convolution over an image of one row of
/// `M` pixels with `K` channels (one run of K per row: the kernels' indirect entry,
/// `qgemm_kernels::indirect`), rather than packing it: where A's rows are dense
/// (stride K), `K ≤ INDIRECT_MAX_K`, there are at least two rows (one row is the
/// GEMV's path), and the kernel has an indirect entry of its own (the VNNI tiers;
/// AVX2's is its fast path's, chosen by the data). The packed B serves as it is: a
/// single run is packed as the GEMM packs K, where the kernel pads K as the weights'
/// own kernel did (`k_padded`); a small product on AMX weights (padded to 64, run by
/// AVX-512 VNNI's kernel, whose runs are padded to 4) packs A instead.
fn indirect_plan(a: &Activations<'_>, k: usize, k_padded: usize, kernel: &Kernel) -> Option<(ConvGeometry, Plan)> {
    if a.signed || a.rows < 2 || k == 0 || k > INDIRECT_MAX_K || a.row_stride != k || !kernel.has_indirect() {
        return None;
    }
    // An image of one row of M pixels, K channels, a 1×1 kernel (N is not read).
    let geometry = crate::conv::geometry(&crate::Conv2dParams::new([1, 1, a.rows, k], 1, [1, 1]), 1, a.rows);
    let plan = indirect::plan(&geometry, k, kernel)?;
    (plan.segments == 1 && plan.seg_groups * 4 == k_padded).then_some((geometry, plan))
}

impl<'a> GemmTasks<'a> {
    /// Checks every argument, as [`gemm_with`] does, and cuts the call by `partition`
    /// (its rows are A's rows, its columns the weights' N). Nothing is written yet.
    ///
    /// # Errors
    /// As [`gemm_with`] (except the ISA and thread options); a
    /// [`Partition::Grid`] whose bounds do not run from 0 to M and N, or decrease; a
    /// [`Partition::Auto`] with zero threads.
    pub fn new(
        a: &Activations<'a>,
        b: &'a PackedWeights,
        stage: &'a OutputStage,
        c: OutputMatrix<'a>,
        partition: &'a Partition,
    ) -> Result<GemmTasks<'a>> {
        if a.cols != b.k() {
            bail!(WeightsMismatch, "A has K = {} columns but the weights were packed for K = {}", a.cols, b.k());
        }
        if c.cols != b.n() {
            bail!(WeightsMismatch, "output has N = {} columns but the weights were packed for N = {}", c.cols, b.n());
        }
        if c.rows != a.rows {
            bail!(Dimension, "A has M = {} rows but the output has {}", a.rows, c.rows);
        }
        check_matrix("A", a.data.len(), a.rows, a.cols, a.row_stride)?;
        c.check()?;
        let dequant = dequant(stage, b.n(), c.output_type())?;
        let stage = output_stage(stage, b.n(), c.output_type())?;
        let kernel = kernel_for_rows(b.isa(), b.kernel(), b.packed(), a.rows);
        let (tile, blocking) = (kernel.tile(), kernel.blocking());
        let shape =
            Shape { m: a.rows, n: b.n(), k: b.k(), row_unit: tile.mr, col_unit: tile.nr, row_block: blocking.mc };
        let grid = Grid::new(partition, shape)?;
        // 4-bit weights run on the packing path, which decodes them a block at a time.
        let indirect = indirect_plan(a, b.k(), b.packed().k_padded(), kernel).filter(|_| !b.is_4_bit());
        Ok(GemmTasks { a: *a, kernel, b: b.packed(), stage, out: c.into_out_data(), grid, indirect, dequant })
    }

    /// The number of tasks.
    pub fn len(&self) -> usize {
        self.grid.len()
    }

    /// True when there are no tasks (never: a partition has at least one).
    pub fn is_empty(&self) -> bool {
        self.grid.len() == 0
    }

    /// Task `index`'s tile of the output.
    pub fn tile(&self, index: usize) -> Option<Tile> {
        self.grid.tile(index)
    }

    /// Runs task `index` on the calling thread, in `workspace` (one per thread).
    ///
    /// # Errors
    /// An index past the last task, or a task that already ran ([`ErrorKind::Task`]);
    /// scratch that could not be allocated ([`ErrorKind::OutOfMemory`]: the task has
    /// not run then, and may be run again). Nothing is written then.
    ///
    /// [`ErrorKind::Task`]: crate::ErrorKind::Task
    /// [`ErrorKind::OutOfMemory`]: crate::ErrorKind::OutOfMemory
    pub fn run(&self, index: usize, workspace: &mut Workspace) -> Result<()> {
        let needs = self.grid.tile(index).map_or_else(ScratchNeeds::default, |tile| self.needs(&tile));
        workspace.reserve(1, &needs)?;
        let tile = self.grid.start(index)?;
        let held = workspace.heap_size();
        self.compute(tile, &mut workspace.sets(1)[0]);
        debug_assert_eq!(workspace.heap_size(), held, "scratch grew past what was reserved for {needs:?}");
        Ok(())
    }

    /// The scratch that every task fits in.
    pub(crate) fn scratch_needs(&self) -> ScratchNeeds {
        let tiles = (0..self.len()).filter_map(|i| self.grid.tile(i));
        tiles.fold(ScratchNeeds::default(), |most, tile| most.max(self.needs(&tile)))
    }

    /// The scratch [`compute`](Self::compute) grows to for `tile`.
    fn needs(&self, tile: &Tile) -> ScratchNeeds {
        let (m, columns) = (tile.rows.len(), tile.cols.clone());
        match self.indirect {
            Some((_, plan)) => indirect::gemm_needs(self.kernel, m, &plan, columns),
            None => driver::gemm_needs(self.kernel, m, !self.a.signed, self.b, columns),
        }
    }

    /// Runs task `index` if it has not run.
    pub(crate) fn run_in(&self, index: usize, scratch: &mut Scratch) {
        if let Ok(tile) = self.grid.start(index) {
            self.compute(tile, scratch);
        }
    }

    /// Computes `tile`, which [`Grid::start`] handed out (so to this call alone).
    fn compute(&self, tile: Tile, scratch: &mut Scratch) {
        let Tile { rows, cols } = tile;
        if rows.is_empty() || cols.is_empty() {
            return;
        }
        // Round to nearest, whatever this thread's caller set (see `fpenv`).
        let _fp = qgemm_kernels::fpenv::DefaultFp::enter();
        // SAFETY: `Grid::start` hands out each task's tile once, and the tiles of a
        // grid share no element, so nothing else reaches this window while it lives.
        let out = unsafe { self.out.window_shared(rows.start, cols.start, rows.len(), cols.len()) };
        let a = &self.a;
        if let Some((geometry, plan)) = self.indirect {
            // The rows of this task, read in place: output pixel r is row r.
            let conv = Im2col {
                input: &a.data[..a.rows * a.row_stride],
                geometry,
                channel0: 0,
                group_channels: a.row_stride,
                first_pixel: rows.start,
                zero_point: a.zero_point,
                max_value: u8::MAX,
                flip: false,
            };
            let args =
                IndirectGemm { m: rows.len(), conv, plan, b: self.b, stage: self.stage, columns: cols.clone(), out };
            indirect::gemm_in(self.kernel, args, scratch);
        } else {
            let args = GemmArgs {
                m: rows.len(),
                // Empty when K = 0, whatever the stride.
                a: a.rows_from(rows.start),
                a_zp: a.kernel_zero_point(),
                b: self.b,
                stage: self.stage,
                columns: cols.clone(),
                out,
            };
            driver::gemm_in(self.kernel, args, scratch);
        }
        if let Some(d) = &self.dequant {
            // SAFETY: as above; the kernel's window is gone.
            let out = unsafe { self.out.window_shared(rows.start, cols.start, rows.len(), cols.len()) };
            d.apply(out.into_i32(), cols.start);
        }
    }
}
