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

/// The destination of a block: a row-major matrix of one element type.
#[derive(Debug)]
pub enum OutData<'a> {
    /// i32 output (no requantization).
    I32(&'a mut [i32]),
    /// u8 output.
    U8(&'a mut [u8]),
    /// i8 output.
    I8(&'a mut [i8]),
}

impl OutData<'_> {
    /// The number of elements.
    pub fn len(&self) -> usize {
        match self {
            OutData::I32(d) => d.len(),
            OutData::U8(d) => d.len(),
            OutData::I8(d) => d.len(),
        }
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reborrows the elements from `start` on.
    pub fn tail(&mut self, start: usize) -> OutData<'_> {
        match self {
            OutData::I32(d) => OutData::I32(&mut d[start..]),
            OutData::U8(d) => OutData::U8(&mut d[start..]),
            OutData::I8(d) => OutData::I8(&mut d[start..]),
        }
    }
}

/// One epilogue call: rows `0..rows` and columns `0..cols` of the accumulator block are
/// corrected, biased, requantized and stored at `out[r * out_stride + c]`.
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
    /// The destination, from the block's first element.
    pub out: OutData<'a>,
    /// Distance between rows of `out`.
    pub out_stride: usize,
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
        assert!(self.out_stride >= cols && self.out.len() >= (rows - 1) * self.out_stride + cols);
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
    let EpilogueArgs { acc, acc_stride, rows, cols, row_sums, zero_points: zp, stage, mut out, out_stride } = args;
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
            let base = r * out_stride + c0;
            match (&mut out, &stage.requant) {
                (OutData::I32(o), _) => o[base..][..width].copy_from_slice(row),
                (OutData::U8(o), Some(rq)) => requantize_row(rq, row, &mut o[base..][..width]),
                (OutData::I8(o), Some(rq)) => requantize_row(rq, row, &mut o[base..][..width]),
                (_, None) => unreachable!("checked by EpilogueArgs::check"),
            }
        }
    }
}
