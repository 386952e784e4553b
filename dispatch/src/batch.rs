//! Batched GEMM: several products, each with its own activations, weights, output
//! stage and output, checked together and then run as one set of tasks, so that a
//! batch of small products keeps every thread busy.

use qgemm_reference::OutputStage;

use crate::error::{Error, Result};
use crate::gemm::{Activations, GemmTasks, Options, OutputMatrix, PackedWeights};
use crate::parallel::{Partition, run_tasks};
use crate::workspace::Workspace;

/// One product of a batch: `c = stage(a × b)`.
#[derive(Debug)]
#[non_exhaustive]
pub struct GemmBatchItem<'a> {
    /// A, M×K.
    pub a: Activations<'a>,
    /// B, packed for K×N.
    pub b: &'a PackedWeights,
    /// The output stage.
    pub stage: &'a OutputStage,
    /// C, M×N.
    pub c: OutputMatrix<'a>,
}

impl<'a> GemmBatchItem<'a> {
    /// The product `c = stage(a × b)`.
    pub fn new(a: Activations<'a>, b: &'a PackedWeights, stage: &'a OutputStage, c: OutputMatrix<'a>) -> Self {
        GemmBatchItem { a, b, stage, c }
    }
}

/// Every product of `batch`, on up to `options.threads` threads, in `workspace`. Each
/// product is cut for the thread count as [`gemm_in`](crate::gemm_in) cuts it, and the
/// tasks of all of them are run as one set. Each output is byte-identical to what
/// [`gemm`](crate::gemm) gives for its product alone.
///
/// Every item is checked before anything is written: on error no output of the batch
/// has been touched, and the message names the item (`batch item 3: …`).
///
/// ```
/// use qgemm::{Activations, GemmBatchItem, OutputMatrix, OutputStage, PackedWeights, Weights};
///
/// let w1 = PackedWeights::new(Weights::kxn(&[1i8; 6], 2, 3))?;
/// let w2 = PackedWeights::new(Weights::kxn(&[2i8; 8], 4, 2))?;
/// let stage = OutputStage::i32();
/// let (mut c1, mut c2) = ([0i32; 3], [0i32; 4]);
/// qgemm::gemm_batch(
///     vec![
///         GemmBatchItem::new(Activations::new(&[1, 2], 1, 2, 0), &w1, &stage, OutputMatrix::i32(&mut c1, 1, 3)),
///         GemmBatchItem::new(Activations::new(&[1; 8], 2, 4, 0), &w2, &stage, OutputMatrix::i32(&mut c2, 2, 2)),
///     ],
///     &qgemm::Options::new().with_threads(2),
///     &mut qgemm::Workspace::new(),
/// )?;
/// assert_eq!((c1, c2), ([3; 3], [8; 4]));
/// # Ok::<(), qgemm::Error>(())
/// ```
///
/// # Errors
/// Every error of [`gemm_in`](crate::gemm_in), for any item.
pub fn gemm_batch(batch: Vec<GemmBatchItem<'_>>, options: &Options, workspace: &mut Workspace) -> Result<()> {
    let partition = Partition::auto(options.threads);
    let tasks = batch
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let GemmBatchItem { a, b, stage, c } = item;
            options
                .check(b.isa())
                .and_then(|()| GemmTasks::new(&a, b, stage, c, &partition))
                .map_err(|e| Error::new(e.kind(), format!("batch item {i}: {}", e.message())))
        })
        .collect::<Result<Vec<_>>>()?;
    // Task t of the batch is task t − starts[j] of item j, for the last start ≤ t.
    let mut starts = Vec::with_capacity(tasks.len());
    let mut total = 0;
    for t in &tasks {
        starts.push(total);
        total += t.len();
    }
    let needs = tasks.iter().map(GemmTasks::scratch_needs).fold(Default::default(), |most, n| n.max(most));
    run_tasks(total, options.run_threads(), workspace, &needs, &|i, scratch| {
        let j = starts.partition_point(|&s| s <= i) - 1;
        tasks[j].run_in(i - starts[j], scratch)
    })
}
