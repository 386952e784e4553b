//! The output stage as the kernels see it: borrowed, already validated parameters,
//! the zero-point correction, and a scalar epilogue that any kernel can use for the
//! edges of its tiles.
//!
//! The zero points are folded in after the integer product, which is what lets the
//! microkernels multiply raw u8 by raw i8:
//!
//! ```text
//! Σ_k (a − a_zp)(b − b_zp) = Σ a·b − b_zp·Σ_k a − a_zp·Σ_k b + K·a_zp·b_zp   (mod 2^32)
//!                            ^^^^^   ^^^^^^^^^^   ^^^^^^^^^^   ^^^^^^^^^^^^
//!                            kernel  row sums     column sums  constant per column
//!
//!                          = Σ a·b − b_zp·Σ_k a + a_zp·(K·b_zp − Σ_k b)
//!                                                       ^^^^^^^^^^^^^^^
//!                                   per-column offset, computed when B is packed
//! ```

use std::marker::PhantomData;
use std::ptr::NonNull;

/// A parameter given per tensor or per output channel (a borrowed view).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Param<'a, T> {
    /// One value for every channel.
    Tensor(T),
    /// One value per channel.
    Channel(&'a [T]),
}

impl<'a, T: Copy> Param<'a, T> {
    /// The value for channel `j`.
    #[inline(always)]
    pub fn at(&self, j: usize) -> T {
        match *self {
            Param::Tensor(v) => v,
            Param::Channel(v) => v[j],
        }
    }

    /// The same parameter seen from channel `first` on.
    pub fn from_channel(self, first: usize) -> Param<'a, T> {
        match self {
            Param::Tensor(v) => Param::Tensor(v),
            Param::Channel(v) => Param::Channel(&v[first..]),
        }
    }

    /// True when it covers at least `channels` channels.
    pub fn covers(&self, channels: usize) -> bool {
        match self {
            Param::Tensor(_) => true,
            Param::Channel(v) => v.len() >= channels,
        }
    }
}

/// The rounding of a fixed-point requantization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rounding {
    /// Double rounding, the final shift with ties away from zero (TFLite reference).
    DoubleTiesAway,
    /// Double rounding, the final shift with ties toward +∞ (TFLite on x86, ruy).
    DoubleHalfUp,
    /// One rounding of the 64-bit product, ties toward +∞ (`TFLITE_SINGLE_ROUNDING`).
    Single,
}

/// A requantization scheme with its parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scheme<'a> {
    /// Multiplier in `[2^30, 2^31)` or 0, shift in `[-31, 30]`.
    FixedPoint {
        /// How the result is rounded.
        rounding: Rounding,
        /// Q31 multipliers.
        multiplier: Param<'a, i32>,
        /// Power-of-two exponents.
        shift: Param<'a, i32>,
    },
    /// A finite, positive f32 scale.
    Float {
        /// The scales.
        scale: Param<'a, f32>,
    },
}

/// Requantization to u8 or i8: the scheme, `+ zero_point`, clamp to `[min, max]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Requant<'a> {
    /// The scheme.
    pub scheme: Scheme<'a>,
    /// The output zero point.
    pub zero_point: i32,
    /// Lower clamp, within the output type.
    pub min: i32,
    /// Upper clamp, within the output type.
    pub max: i32,
}

/// The output stage: optional bias, optional requantization (absent for i32 output).
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct OutputStage<'a> {
    /// Per-column bias, added with wrapping.
    pub bias: Option<&'a [i32]>,
    /// Requantization; `None` stores i32.
    pub requant: Option<Requant<'a>>,
}

impl<'a> OutputStage<'a> {
    /// The same stage seen from column `first` on.
    pub fn from_column(self, first: usize) -> OutputStage<'a> {
        OutputStage {
            bias: self.bias.map(|b| &b[first..]),
            requant: self.requant.map(|r| Requant {
                scheme: match r.scheme {
                    Scheme::FixedPoint { rounding, multiplier, shift } => Scheme::FixedPoint {
                        rounding,
                        multiplier: multiplier.from_channel(first),
                        shift: shift.from_channel(first),
                    },
                    Scheme::Float { scale } => Scheme::Float { scale: scale.from_channel(first) },
                },
                ..r
            }),
        }
    }

    fn covers(&self, cols: usize) -> bool {
        let bias = self.bias.is_none_or(|b| b.len() >= cols);
        let requant = self.requant.as_ref().is_none_or(|r| match &r.scheme {
            Scheme::FixedPoint { multiplier, shift, .. } => multiplier.covers(cols) && shift.covers(cols),
            Scheme::Float { scale } => scale.covers(cols),
        });
        bias && requant
    }
}

/// The zero-point correction of one block of columns.
#[derive(Clone, Copy, Debug)]
pub struct ZeroPoints<'a> {
    /// The activation zero point.
    pub a_zp: i32,
    /// `K·b_zp[n] − Σ_k B[k][n]` per column (computed when B was packed).
    pub col_offsets: &'a [i32],
    /// `b_zp[n]` per column.
    pub b_zp: &'a [i32],
}

impl ZeroPoints<'_> {
    /// Whether a weight zero point of columns `0..cols` is nonzero: an OR over them,
    /// which vectorizes (`any` goes one at a time).
    pub fn some_b_zp(&self, cols: usize) -> bool {
        self.b_zp[..cols].iter().fold(0, |or, &z| or | z) != 0
    }
}

/// Write access to a `rows × cols` window of a row-major matrix whose rows are
/// `stride` elements apart: element `(r, c)` is at `r · stride + c` from its start.
///
/// ```text
///            ◄─────────── stride ───────────►
///            ◄── cols ──►
///   row 0    [##########]...................   # this view's elements
///   row 1    [##########]...................   . the gaps: other views' windows,
///   ...                                          or the caller's data
///   rows − 1 [##########]
/// ```
///
/// It borrows exactly the window's elements, never the gaps between its rows, so
/// windows of one matrix that share no element may be written at once, on different
/// threads: that is how a GEMM's output is cut into tiles
/// ([`window_shared`](OutView::window_shared)).
/// Code that writes through [`as_mut_ptr`](OutView::as_mut_ptr) must stay inside the
/// window; the epilogue tests check that no kernel writes a gap.
#[derive(Debug)]
pub struct OutView<'a, T> {
    ptr: NonNull<T>,
    rows: usize,
    cols: usize,
    stride: usize,
    _borrow: PhantomData<&'a mut T>,
}

// SAFETY: an `OutView` is a unique borrow of its window's elements (the constructors'
// invariant), so moving it to another thread is moving a `&mut` to those elements.
unsafe impl<T: Send> Send for OutView<'_, T> {}
// SAFETY: a shared `&OutView` reads only the view's own fields; every access to the
// elements takes `&mut self`.
unsafe impl<T: Sync> Sync for OutView<'_, T> {}

impl<'a, T> OutView<'a, T> {
    /// The `rows × cols` window at the start of `data`, rows `stride` apart.
    ///
    /// # Panics
    /// If `data` is shorter than `(rows − 1) · stride + cols`, or `stride < cols` with
    /// more than one row.
    pub fn new(data: &'a mut [T], rows: usize, cols: usize, stride: usize) -> OutView<'a, T> {
        if rows > 0 && cols > 0 {
            assert!(rows == 1 || stride >= cols, "output stride {stride} below its {cols} columns");
            let needed = (rows - 1).checked_mul(stride).and_then(|x| x.checked_add(cols));
            assert!(needed.is_some_and(|n| n <= data.len()), "output of {} values too short", data.len());
        }
        // SAFETY: the window lies inside `data` (checked above; nothing when empty), whose
        // unique borrow for 'a moves into the view.
        unsafe { OutView::from_raw_parts(data.as_mut_ptr(), rows, cols, stride) }
    }

    /// A view of the window at `ptr`.
    ///
    /// # Safety
    /// For `'a`, every element `ptr + r · stride + c` (`r < rows`, `c < cols`) is valid
    /// for reads and writes and reached by nothing but this view. `ptr` is non-null.
    pub unsafe fn from_raw_parts(ptr: *mut T, rows: usize, cols: usize, stride: usize) -> OutView<'a, T> {
        let ptr = NonNull::new(ptr).expect("a non-null output pointer");
        OutView { ptr, rows, cols, stride, _borrow: PhantomData }
    }

    /// Rows of the window.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns of the window.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Distance between rows, in elements.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Element `(0, 0)`: writes through it must stay inside the window.
    pub fn as_mut_ptr(&mut self) -> *mut T {
        self.ptr.as_ptr()
    }

    /// Columns `c0 .. c0 + len` of row `r`.
    ///
    /// # Panics
    /// Outside the window.
    pub fn row_mut(&mut self, r: usize, c0: usize, len: usize) -> &mut [T] {
        assert!(r < self.rows && c0 <= self.cols && len <= self.cols - c0, "outside the output window");
        // SAFETY: the elements are inside the window (checked), which this view borrows
        // uniquely; the slice reborrows `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(r * self.stride + c0), len) }
    }

    /// The `rows × cols` window at `(r0, c0)` of this one, reborrowed.
    ///
    /// # Panics
    /// If it does not fit inside this window.
    pub fn window(&mut self, r0: usize, c0: usize, rows: usize, cols: usize) -> OutView<'_, T> {
        assert!(r0 <= self.rows && rows <= self.rows - r0, "rows outside the output window");
        assert!(c0 <= self.cols && cols <= self.cols - c0, "columns outside the output window");
        // SAFETY: a sub-window of this view's window, borrowing `self` for its lifetime.
        unsafe { OutView::from_raw_parts(self.at(r0, c0, rows, cols), rows, cols, self.stride) }
    }

    /// The `rows × cols` window at `(r0, c0)` of this one, for as long as this view
    /// lives, from a shared borrow: how one output is handed out to the tasks of a
    /// partition, on several threads at once.
    ///
    /// # Safety
    /// While the result lives, nothing else may reach its elements: windows taken
    /// this way must not overlap, and this view must not write them.
    ///
    /// # Panics
    /// If it does not fit inside this window.
    pub unsafe fn window_shared(&self, r0: usize, c0: usize, rows: usize, cols: usize) -> OutView<'a, T> {
        assert!(r0 <= self.rows && rows <= self.rows - r0, "rows outside the output window");
        assert!(c0 <= self.cols && cols <= self.cols - c0, "columns outside the output window");
        // SAFETY: a sub-window of this view's window, for 'a; the caller keeps it the
        // only way to its elements.
        unsafe { OutView::from_raw_parts(self.at(r0, c0, rows, cols), rows, cols, self.stride) }
    }

    /// The address of `(r0, c0)` for a sub-window of `rows × cols` (inside this one);
    /// a dangling pointer for an empty one, which is never dereferenced.
    fn at(&self, r0: usize, c0: usize, rows: usize, cols: usize) -> *mut T {
        if rows == 0 || cols == 0 {
            return NonNull::dangling().as_ptr();
        }
        // SAFETY: `(r0, c0)` is an element of this window (rows and cols nonzero, and
        // the callers keep the sub-window inside), so the offset stays in the
        // allocation.
        unsafe { self.ptr.as_ptr().add(r0 * self.stride + c0) }
    }
}

impl<'a> OutView<'a, i8> {
    /// The same window, as the bytes that SIMD code stores.
    pub fn into_bytes(self) -> OutView<'a, u8> {
        // SAFETY: i8 and u8 have the same size, alignment and validity (every bit
        // pattern), and the borrow of the window moves into the result.
        unsafe { OutView::from_raw_parts(self.ptr.as_ptr().cast(), self.rows, self.cols, self.stride) }
    }
}

/// The destination of a block: a window of a row-major matrix of one element type.
#[derive(Debug)]
pub enum OutData<'a> {
    /// i32 output (no requantization).
    I32(OutView<'a, i32>),
    /// u8 output.
    U8(OutView<'a, u8>),
    /// i8 output.
    I8(OutView<'a, i8>),
}

/// `$body` on the view inside any variant of an `OutData`, bound to `$v`.
macro_rules! on_view {
    ($out:expr, $v:ident => $body:expr) => {
        match $out {
            OutData::I32($v) => $body,
            OutData::U8($v) => $body,
            OutData::I8($v) => $body,
        }
    };
}

/// `$body` on the view inside any variant, rewrapped in the same variant.
macro_rules! map_view {
    ($out:expr, $v:ident => $body:expr) => {
        match $out {
            OutData::I32($v) => OutData::I32($body),
            OutData::U8($v) => OutData::U8($body),
            OutData::I8($v) => OutData::I8($body),
        }
    };
}

impl<'a> OutData<'a> {
    /// The view of i32 output.
    ///
    /// # Panics
    /// For u8 or i8 output.
    pub fn into_i32(self) -> OutView<'a, i32> {
        match self {
            OutData::I32(v) => v,
            _ => panic!("an i32 view of u8 or i8 output"),
        }
    }

    /// Rows of the window.
    pub fn rows(&self) -> usize {
        on_view!(self, v => v.rows())
    }

    /// Columns of the window.
    pub fn cols(&self) -> usize {
        on_view!(self, v => v.cols())
    }

    /// Distance between rows, in elements.
    pub fn stride(&self) -> usize {
        on_view!(self, v => v.stride())
    }

    /// The `rows × cols` window at `(r0, c0)` from a shared borrow (see
    /// [`OutView::window_shared`]).
    ///
    /// # Safety
    /// As [`OutView::window_shared`].
    pub unsafe fn window_shared(&self, r0: usize, c0: usize, rows: usize, cols: usize) -> OutData<'a> {
        // SAFETY: the caller's contract, passed on.
        map_view!(self, v => unsafe { v.window_shared(r0, c0, rows, cols) })
    }

    /// The `rows × cols` window at `(r0, c0)`, reborrowed (see [`OutView::window`]).
    pub fn window(&mut self, r0: usize, c0: usize, rows: usize, cols: usize) -> OutData<'_> {
        map_view!(self, v => v.window(r0, c0, rows, cols))
    }
}

/// One epilogue call: rows `0..rows` and columns `0..cols` of the accumulator block are
/// corrected, biased, requantized and stored at element `(r, c)` of `out`.
#[derive(Debug)]
pub struct EpilogueArgs<'a> {
    /// Accumulators `Σ a·b`, row-major with `acc_stride` columns.
    pub acc: &'a [i32],
    /// Distance between rows of `acc`.
    pub acc_stride: usize,
    /// Rows to store.
    pub rows: usize,
    /// Columns to store.
    pub cols: usize,
    /// `Σ_k A[r][k]` per row (only read when some `b_zp` is nonzero: the driver leaves
    /// them 0 otherwise).
    pub row_sums: &'a [i32],
    /// Zero points and column sums, from the block's first column.
    pub zero_points: ZeroPoints<'a>,
    /// The output stage, from the block's first column.
    pub stage: OutputStage<'a>,
    /// The destination: a window of at least `rows × cols` from the block's first
    /// element.
    pub out: OutData<'a>,
}

impl EpilogueArgs<'_> {
    /// Panics unless every slice covers the rows and columns to be stored.
    pub(crate) fn check(&self) {
        let (rows, cols) = (self.rows, self.cols);
        if rows == 0 || cols == 0 {
            return;
        }
        assert!(self.acc_stride >= cols && self.acc.len() >= (rows - 1) * self.acc_stride + cols);
        self.check_output();
    }

    /// Panics unless every slice but the accumulators covers the rows and columns to
    /// be stored (what a kernel that fuses the stage into its tiles reads).
    pub(crate) fn check_output(&self) {
        let (rows, cols) = (self.rows, self.cols);
        if rows == 0 || cols == 0 {
            return;
        }
        assert!(self.row_sums.len() >= rows);
        assert!(self.zero_points.col_offsets.len() >= cols && self.zero_points.b_zp.len() >= cols);
        assert!(self.stage.covers(cols), "output stage shorter than the block");
        assert!(self.out.rows() >= rows && self.out.cols() >= cols, "output window smaller than the block");
        let needs_requant = !matches!(self.out, OutData::I32(_));
        assert_eq!(self.stage.requant.is_some(), needs_requant, "output type and stage");
    }
}

/// gemmlowp's saturating rounding doubling high multiply.
#[inline(always)]
pub fn srdhm(a: i32, b: i32) -> i32 {
    let overflow = a == b && a == i32::MIN;
    let ab = i64::from(a) * i64::from(b);
    let nudge = if ab >= 0 { 1 << 30 } else { 1 - (1 << 30) };
    let high = ((ab + nudge) / (1i64 << 31)) as i32;
    if overflow { i32::MAX } else { high }
}

/// gemmlowp's rounding divide by a power of two (ties away from zero), in its
/// mask-and-threshold form.
#[inline(always)]
pub fn rounding_divide_by_pot(x: i32, exponent: u32) -> i32 {
    let mask = ((1i64 << exponent) - 1) as i32;
    let remainder = x & mask;
    let threshold = (mask >> 1) + i32::from(x < 0);
    (x >> exponent) + i32::from(remainder > threshold)
}

/// One requantized value, before the zero point: the three fixed-point schemes.
/// Returns i64 because single rounding can exceed i32 before the clamp.
#[inline(always)]
pub fn fixed_point(rounding: Rounding, x: i32, multiplier: i32, shift: i32) -> i64 {
    match rounding {
        Rounding::DoubleTiesAway | Rounding::DoubleHalfUp => {
            let left = shift.max(0) as u32;
            let right = (-shift).max(0) as u32;
            let y = srdhm(x.wrapping_shl(left), multiplier);
            match rounding {
                Rounding::DoubleTiesAway => i64::from(rounding_divide_by_pot(y, right)),
                _ if right == 0 => i64::from(y),
                _ => (i64::from(y) + (1i64 << (right - 1))) >> right,
            }
        }
        Rounding::Single => {
            let total = (31 - shift) as u32;
            (i64::from(x) * i64::from(multiplier) + (1i64 << (total - 1))) >> total
        }
    }
}

/// An element type the epilogue can store a clamped value into.
trait Store: Copy {
    /// `v` is already within the type's range.
    fn from_clamped(v: i32) -> Self;
}

impl Store for u8 {
    #[inline(always)]
    fn from_clamped(v: i32) -> u8 {
        v as u8
    }
}

impl Store for i8 {
    #[inline(always)]
    fn from_clamped(v: i32) -> i8 {
        v as i8
    }
}

/// Requantizes one row of biased accumulators into `out`. The scheme and the
/// per-tensor/per-channel choice are matched once per row, outside the loops, so the
/// loops are straight-line code the compiler can vectorize.
#[inline(always)]
fn requantize_row<T: Store>(r: &Requant<'_>, vals: &[i32], out: &mut [T]) {
    let (zp, min, max) = (r.zero_point, r.min, r.max);
    match r.scheme {
        Scheme::Float { scale } => {
            let lo = (min - zp) as f32;
            let hi = (max - zp) as f32;
            // Clamp, then round half to even by adding 1.5·2^23: the sum's low mantissa
            // bits are then the rounded integer (exact for |x| < 2^22; here |x| ≤ 510).
            // Plain compares rather than f32::max/min (no NaN can occur: the scale is
            // finite), so that the loop vectorizes.
            const MAGIC: f32 = 12_582_912.0;
            let one = |v: i32, s: f32| {
                let x = v as f32 * s;
                let x = if x < lo { lo } else { x };
                let x = if x > hi { hi } else { x };
                let rounded = (x + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32;
                T::from_clamped(rounded + zp)
            };
            match scale {
                Param::Tensor(s) => out.iter_mut().zip(vals).for_each(|(o, &v)| *o = one(v, s)),
                Param::Channel(ss) => out.iter_mut().zip(vals).zip(ss).for_each(|((o, &v), &s)| *o = one(v, s)),
            }
        }
        Scheme::FixedPoint { rounding, multiplier, shift } => {
            let one = |v: i32, m: i32, s: i32| {
                let q = fixed_point(rounding, v, m, s) + i64::from(zp);
                T::from_clamped(q.clamp(i64::from(min), i64::from(max)) as i32)
            };
            match (multiplier, shift) {
                (Param::Tensor(m), Param::Tensor(s)) => out.iter_mut().zip(vals).for_each(|(o, &v)| *o = one(v, m, s)),
                _ => out
                    .iter_mut()
                    .zip(vals)
                    .enumerate()
                    .for_each(|(j, (o, &v))| *o = one(v, multiplier.at(j), shift.at(j))),
            }
        }
    }
}

/// The epilogue in plain Rust, for any kernel: correction, bias, requantization,
/// store. Multiversioned like the portable kernel, so the row loops vectorize.
pub fn epilogue_scalar(args: EpilogueArgs<'_>) {
    epilogue_impl(args)
}

/// Columns handled at a time by the epilogue: its row buffers live on the stack.
const EPILOGUE_CHUNK: usize = 64;

#[multiversion::multiversion(targets("x86_64+avx2", "x86_64+sse4.1", "aarch64+neon"))]
fn epilogue_impl(args: EpilogueArgs<'_>) {
    let EpilogueArgs { acc, acc_stride, rows, cols, row_sums, zero_points: zp, stage, mut out } = args;
    let mut column_terms = [0i32; EPILOGUE_CHUNK];
    let mut row = [0i32; EPILOGUE_CHUNK];
    for c0 in (0..cols).step_by(EPILOGUE_CHUNK) {
        let width = EPILOGUE_CHUNK.min(cols - c0);
        let b_zp = &zp.b_zp[c0..c0 + width];
        let any_b_zp = b_zp.iter().any(|&z| z != 0);
        let stage = stage.from_column(c0);
        // What depends on the column alone, once per chunk of columns:
        // Σ(a − a_zp)(b − b_zp) = Σab − b_zp·Σa + a_zp·(K·b_zp − Σb), mod 2^32; plus bias.
        for (j, t) in column_terms[..width].iter_mut().enumerate() {
            let offset = zp.col_offsets[c0 + j].wrapping_mul(zp.a_zp);
            *t = match stage.bias {
                Some(bias) => offset.wrapping_add(bias[j]),
                None => offset,
            };
        }
        for r in 0..rows {
            let acc_row = &acc[r * acc_stride + c0..][..width];
            let row = &mut row[..width];
            if any_b_zp {
                let row_sum = row_sums[r];
                for (((v, &a), &t), &z) in row.iter_mut().zip(acc_row).zip(&column_terms).zip(b_zp) {
                    *v = a.wrapping_sub(z.wrapping_mul(row_sum)).wrapping_add(t);
                }
            } else {
                for ((v, &a), &t) in row.iter_mut().zip(acc_row).zip(&column_terms) {
                    *v = a.wrapping_add(t);
                }
            }
            match (&mut out, &stage.requant) {
                (OutData::I32(o), _) => o.row_mut(r, c0, width).copy_from_slice(row),
                (OutData::U8(o), Some(rq)) => requantize_row(rq, row, o.row_mut(r, c0, width)),
                (OutData::I8(o), Some(rq)) => requantize_row(rq, row, o.row_mut(r, c0, width)),
                (_, None) => unreachable!("checked by EpilogueArgs::check"),
            }
        }
    }
}
