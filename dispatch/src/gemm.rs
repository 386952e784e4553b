//! GEMM: packed weights, the matrices of a call, and the entry points.

use qgemm_kernels::Kernel;
use qgemm_kernels::driver::{self, GemmArgs, Scratch};
use qgemm_kernels::output::OutData;
use qgemm_kernels::pack::{BLayout, PackedB};
use qgemm_kernels::rows::Rows;
use qgemm_reference::{Channelwise, OutputStage, OutputType, WeightLayout};

use crate::error::{Result, bail, out_of_memory};
use crate::isa::{Isa, kernel_for, selected_isa};
use crate::validate::{check_matrix, check_weight_zero_points, output_stage, product};
use crate::workspace::Workspace;

/// The weight matrix B (K×N, i8) as the caller holds it, before packing.
#[derive(Clone, Copy, Debug)]
pub struct Weights<'a> {
    /// The weights, dense, `k * n` values in `layout`.
    pub data: &'a [i8],
    /// K×N row-major, or N×K row-major (the PyTorch/ONNX linear-weight layout).
    pub layout: WeightLayout,
    /// K, the depth.
    pub k: usize,
    /// N, the output columns.
    pub n: usize,
    /// The weight zero point, per tensor or per column.
    pub zero_point: &'a Channelwise<i8>,
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
    /// Packs `weights` for the [selected ISA](crate::selected_isa).
    ///
    /// # Errors
    /// If `data.len() != k·n`, a size overflows, the per-column zero points are not N,
    /// the packed data cannot be allocated, or `QGEMM_ISA` is invalid.
    pub fn new(weights: Weights<'_>) -> Result<PackedWeights> {
        PackedWeights::for_isa(selected_isa()?, weights)
    }

    /// Packs `weights` for `isa`.
    ///
    /// # Errors
    /// As [`new`](Self::new), and if `isa` cannot run on this CPU.
    pub fn for_isa(isa: Isa, weights: Weights<'_>) -> Result<PackedWeights> {
        let kernel = kernel_for(isa)?;
        let Weights { data, layout, k, n, zero_point } = weights;
        let len = product("weights K·N", &[k, n])?;
        if data.len() != len {
            bail!(BufferLength, "weights: {} values for K = {k} × N = {n} (needs {len})", data.len());
        }
        check_weight_zero_points(zero_point, n)?;
        let tile = kernel.tile();
        // The packed size: panels of nr columns, K rounded up to the K-group.
        let kp = k.checked_next_multiple_of(tile.kg);
        let cols = n.checked_next_multiple_of(tile.nr);
        match (kp, cols) {
            (Some(kp), Some(cols)) => product("packed weights", &[kp, cols])?,
            _ => bail!(Overflow, "weights: K = {k} or N = {n} overflows when padded to the tile"),
        };
        let layout = match layout {
            WeightLayout::KxN => BLayout::KxN,
            WeightLayout::NxK => BLayout::NxK,
        };
        let packed = PackedB::try_new(tile, data, layout, k, n, zero_point.values())
            .map_err(|e| out_of_memory(&format!("weights K = {k} × N = {n}"), e))?;
        Ok(PackedWeights { isa, kernel, packed })
    }

    /// The ISA the weights were packed for; GEMMs with them run on it.
    pub fn isa(&self) -> Isa {
        self.isa
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

/// The activation matrix A (M×K, u8, row-major) of one call.
#[derive(Clone, Copy, Debug)]
pub struct Activations<'a> {
    /// `A[m][k]` is at `data[m * row_stride + k]`.
    pub data: &'a [u8],
    /// M.
    pub rows: usize,
    /// K.
    pub cols: usize,
    /// Distance between rows, `>= cols`.
    pub row_stride: usize,
    /// The activation zero point.
    pub zero_point: u8,
}

impl<'a> Activations<'a> {
    /// A dense `rows × cols` matrix.
    pub fn new(data: &'a [u8], rows: usize, cols: usize, zero_point: u8) -> Activations<'a> {
        Activations { data, rows, cols, row_stride: cols, zero_point }
    }

    /// The same matrix with rows `row_stride` elements apart.
    pub fn with_row_stride(self, row_stride: usize) -> Activations<'a> {
        Activations { row_stride, ..self }
    }
}

/// An output buffer of one element type.
#[derive(Debug)]
pub enum OutputBuffer<'a> {
    /// i32 output: the output stage must not requantize.
    I32(&'a mut [i32]),
    /// u8 output: the output stage must requantize.
    U8(&'a mut [u8]),
    /// i8 output: the output stage must requantize.
    I8(&'a mut [i8]),
}

/// The output matrix C (M×N, row-major) of one call. Only the `rows × cols` elements
/// are written; the gaps between rows (when `row_stride > cols`) are left untouched.
#[derive(Debug)]
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
        }
    }

    pub(crate) fn len(&self) -> usize {
        match &self.buffer {
            OutputBuffer::I32(d) => d.len(),
            OutputBuffer::U8(d) => d.len(),
            OutputBuffer::I8(d) => d.len(),
        }
    }

    pub(crate) fn check(&self) -> Result<()> {
        check_matrix("output", self.len(), self.rows, self.cols, self.row_stride)
    }

    pub(crate) fn into_out_data(self) -> OutData<'a> {
        match self.buffer {
            OutputBuffer::I32(d) => OutData::I32(d),
            OutputBuffer::U8(d) => OutData::U8(d),
            OutputBuffer::I8(d) => OutData::I8(d),
        }
    }
}

/// How a call runs. Build it with [`Options::new`] and the `with_` methods; fields may
/// be added in later versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Options {
    /// Threads to run on (the calling thread included), `>= 1`. Results are identical
    /// for any thread count.
    pub threads: usize,
    /// When set, the call fails unless the weights were packed for this ISA.
    pub isa: Option<Isa>,
}

impl Default for Options {
    fn default() -> Options {
        Options { threads: 1, isa: None }
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
}

impl Options {
    pub(crate) fn check(&self, weights_isa: Isa) -> Result<()> {
        if self.threads == 0 {
            bail!(Threads, "options.threads = 0; at least one thread is needed");
        }
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

/// `C = stage(Σ_k (A − a_zp)(B − b_zp))` with explicit [`Options`].
///
/// Every argument is checked before anything is written: on error the output is
/// untouched. `M = 0` or `N = 0` does nothing; `K = 0` gives the bias alone (then
/// requantized).
///
/// # Errors
/// A shape that disagrees between A, the weights and C; a buffer too short for its
/// shape and stride; a stride below its row length; an invalid output stage (bias or
/// per-channel lengths, multiplier, shift, scale, zero point, clamp, or a stage that
/// does not fit C's element type); zero threads; or weights packed for another ISA
/// than `options.isa`.
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
    let lowered = output_stage(stage, b.n(), c.output_type())?;
    let out_stride = c.row_stride;
    let kernel = b.kernel();
    let run = |row0: usize, rows: usize, out: OutData<'_>, scratch: &mut Scratch| {
        driver::gemm_in(
            kernel,
            GemmArgs {
                m: rows,
                // Empty when K = 0, whatever the stride.
                a: Rows::Matrix { data: a.data.get(row0 * a.row_stride..).unwrap_or(&[]), stride: a.row_stride },
                a_zp: a.zero_point,
                b: b.packed(),
                stage: lowered,
                out,
                out_stride,
            },
            scratch,
        )
    };
    for_row_ranges(a.rows, kernel.tile().mr, options.threads, c.into_out_data(), out_stride, workspace, run);
    Ok(())
}

/// Calls `run(row0, rows, out, scratch)` for contiguous ranges of rows `0..m`
/// (multiples of `align` but the last) on up to `threads` threads, where `out` starts
/// at row `row0` and holds only that range's rows, and each thread has its own scratch
/// from `workspace`. Every output element is computed the same way whatever the split,
/// so results do not depend on the thread count.
#[allow(clippy::too_many_arguments)]
pub(crate) fn for_row_ranges<F>(
    m: usize,
    align: usize,
    threads: usize,
    out: OutData<'_>,
    out_stride: usize,
    workspace: &mut Workspace,
    run: F,
) where
    F: Fn(usize, usize, OutData<'_>, &mut Scratch) + Sync,
{
    let chunks = threads.min(m.div_ceil(align)).max(1);
    let scratch = workspace.threads(chunks);
    if chunks == 1 {
        run(0, m, out, &mut scratch[0]);
        return;
    }
    let rows_per_chunk = m.div_ceil(chunks).div_ceil(align) * align;
    std::thread::scope(|scope| {
        let mut rest = out;
        let mut row0 = 0;
        let mut scratch = scratch.iter_mut();
        while row0 < m {
            let rows = rows_per_chunk.min(m - row0);
            let (mine, others) = split_rows(rest, rows * out_stride);
            rest = others;
            let scratch = scratch.next().expect("one scratch per range");
            if row0 + rows == m {
                run(row0, rows, mine, scratch);
            } else {
                let run = &run;
                scope.spawn(move || run(row0, rows, mine, scratch));
            }
            row0 += rows;
        }
    });
}

/// Splits an output at element `at` (or at its end, if shorter).
fn split_rows(out: OutData<'_>, at: usize) -> (OutData<'_>, OutData<'_>) {
    match out {
        OutData::I32(d) => {
            let (x, y) = d.split_at_mut(at.min(d.len()));
            (OutData::I32(x), OutData::I32(y))
        }
        OutData::U8(d) => {
            let (x, y) = d.split_at_mut(at.min(d.len()));
            (OutData::U8(x), OutData::U8(y))
        }
        OutData::I8(d) => {
            let (x, y) = d.split_at_mut(at.min(d.len()));
            (OutData::I8(x), OutData::I8(y))
        }
    }
}
