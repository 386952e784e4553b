//! GEMM as a triple loop, and the output stage applied element by element.

use crate::requant::{check_requantize, dequantize, requantize};
use crate::types::{Channelwise, OutputData, OutputStage, OutputType, WeightLayout};

/// One GEMM problem: `C[m][n] = Σ_k (A[m][k] − a_zp) · (B[k][n] − b_zp[n])`.
#[derive(Clone, Copy, Debug)]
pub struct GemmProblem<'a> {
    /// Rows of A and C.
    pub m: usize,
    /// Columns of B and C.
    pub n: usize,
    /// Columns of A, rows of B.
    pub k: usize,
    /// A, row-major: `A[m][k]` is at `m * a_row_stride + k`.
    pub a: &'a [u8],
    /// Distance between rows of A, `>= k`.
    pub a_row_stride: usize,
    /// The activation zero point.
    pub a_zero_point: u8,
    /// B, dense, in `b_layout`.
    pub b: &'a [i8],
    /// How B is laid out.
    pub b_layout: WeightLayout,
    /// The weight zero point, per tensor or per column.
    pub b_zero_point: &'a Channelwise<i8>,
}

impl GemmProblem<'_> {
    /// `B[k][n]`.
    pub fn b_at(&self, k: usize, n: usize) -> i8 {
        match self.b_layout {
            WeightLayout::KxN => self.b[k * self.n + n],
            WeightLayout::NxK => self.b[n * self.k + k],
        }
    }

    fn check(&self) {
        assert!(self.a_row_stride >= self.k, "A row stride below K");
        if self.m > 0 {
            assert!(self.a.len() >= (self.m - 1) * self.a_row_stride + self.k, "A too short");
        }
        assert_eq!(self.b.len(), self.k * self.n, "B length");
        if let Some(len) = self.b_zero_point.channels() {
            assert_eq!(len, self.n, "per-column weight zero points");
        }
    }
}

/// The i32 accumulators of a GEMM, `m × n`, row-major, dense. Every product and sum
/// wraps (two's complement), so the result is defined for any K.
///
/// # Panics
/// If the problem's buffers do not match its shape.
pub fn gemm_accumulators(p: &GemmProblem<'_>) -> Vec<i32> {
    p.check();
    // B as K×N with the zero point already subtracted: `b[k][n] − b_zp[n]`.
    let b: Vec<i32> = (0..p.k)
        .flat_map(|k| (0..p.n).map(move |n| (k, n)))
        .map(|(k, n)| i32::from(p.b_at(k, n)) - i32::from(p.b_zero_point.at(n)))
        .collect();
    let mut acc = vec![0i32; p.m * p.n];
    for m in 0..p.m {
        let row = &mut acc[m * p.n..(m + 1) * p.n];
        for k in 0..p.k {
            let a = i32::from(p.a[m * p.a_row_stride + k]) - i32::from(p.a_zero_point);
            let b_row = &b[k * p.n..(k + 1) * p.n];
            for (c, &b) in row.iter_mut().zip(b_row) {
                // |a·b| <= 255·255: the product never overflows; the sum wraps.
                *c = c.wrapping_add(a * b);
            }
        }
    }
    acc
}

/// The output stage over dense `rows × n` accumulators: bias (wrapping), then the raw
/// i32 values, requantization to u8/i8, or dequantization to f32.
///
/// # Panics
/// If the stage does not fit `out` and `n` (see [`OutputStage`]).
pub fn apply_output_stage(acc: &[i32], n: usize, stage: &OutputStage, out: OutputType) -> OutputData {
    if let Some(bias) = &stage.bias {
        assert_eq!(bias.len(), n, "bias length");
    }
    let biased = |i: usize| -> i32 {
        let column = i % n;
        match &stage.bias {
            Some(bias) => acc[i].wrapping_add(bias[column]),
            None => acc[i],
        }
    };
    let quantized = |i: usize| -> i32 {
        let r = stage.requantize.as_ref().expect("u8/i8 output needs requantization");
        requantize(biased(i), r, i % n)
    };
    if let Some(r) = &stage.requantize {
        check_requantize(r, out);
    }
    assert!(stage.dequantize.is_none() || out == OutputType::F32, "dequantization needs an f32 output");
    let len = acc.len();
    match out {
        OutputType::I32 => {
            assert!(stage.requantize.is_none(), "i32 output takes no requantization");
            OutputData::I32((0..len).map(biased).collect())
        }
        OutputType::F32 => {
            let d = stage.dequantize.as_ref().expect("f32 output needs dequantization");
            if let Some(bias) = &d.bias {
                assert_eq!(bias.len(), n, "f32 bias length");
            }
            let value = |i: usize| dequantize(biased(i), d.scale.at(i % n), d.bias.as_ref().map(|b| b[i % n]));
            OutputData::F32((0..len).map(value).collect())
        }
        OutputType::U8 => {
            OutputData::U8((0..len).map(|i| u8::try_from(quantized(i)).expect("clamped to u8")).collect())
        }
        OutputType::I8 => {
            OutputData::I8((0..len).map(|i| i8::try_from(quantized(i)).expect("clamped to i8")).collect())
        }
    }
}

/// A whole GEMM: accumulators, then the output stage. The result is dense, `m × n`.
pub fn gemm(p: &GemmProblem<'_>, stage: &OutputStage, out: OutputType) -> OutputData {
    apply_output_stage(&gemm_accumulators(p), p.n, stage, out)
}
