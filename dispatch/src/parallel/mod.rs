//! Cutting a call into tasks, and running them on threads.
//!
//! Every call is a grid of tasks over its output: rows (GEMM rows, or convolution
//! output pixels) by columns (output channels). A task computes its tile of the output
//! completely, K included, and writes only that tile:
//!
//! ```text
//!              cols[0]     cols[1]          cols[2] = N
//!   rows[0] ┌───────────┬────────────────┐
//!           │  task 0   │     task 1     │     task t = (i, j) covers rows
//!   rows[1] ├───────────┼────────────────┤     rows[i]..rows[i + 1] and columns
//!           │  task 2   │     task 3     │     cols[j]..cols[j + 1]; tasks are
//!   rows[2] ├───────────┼────────────────┤     numbered row by row
//!           │  task 4   │     task 5     │
//!   rows[3] └───────────┴────────────────┘
//!   = M
//! ```
//!
//! Each output element is computed by one task, with the same integer arithmetic and
//! the same output stage whichever task it falls in, so results are byte-identical for
//! any partition and any thread count (integer sums do not depend on their order, and
//! the output stage is per element).
//!
//! [`Partition::Auto`] picks the grid; [`Partition::Grid`] takes the caller's cuts,
//! anywhere (a cut inside a kernel's column panel costs some repeated work, never a
//! different result). [`run_tasks`] runs the tasks on the calling thread and helper
//! threads (rayon's pool with the `rayon` feature, on by default; else OS threads)
//! that stay awake between calls ([`helpers`]), each worker with its own scratch,
//! taking the next task from a shared counter.

mod handoff;
mod helpers;

/// What [`handoff`] is built on: std's atomics here, loom's in its model
/// (`dispatch/tests/loom_handoff.rs`).
mod sync {
    pub(crate) use std::sync::Mutex;
    pub(crate) use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering, fence};

    /// One turn of a wait loop.
    pub(crate) fn spin() {
        std::hint::spin_loop();
    }

    /// Marks a helper's access to a job, for the model; nothing here.
    pub(crate) struct Probe;

    impl Probe {
        pub(crate) fn new() -> Probe {
            Probe
        }

        pub(crate) fn touch(&self) {}
    }
}

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Result, bail};

pub(crate) use helpers::{Threads, run_tasks};

/// The least work [`Partition::Auto`] gives a task, in multiply-accumulates (as MLAS
/// does): smaller problems run as fewer tasks, down to one, on fewer threads.
pub const MIN_TASK_MACS: usize = 1 << 16;

/// The most threads a call accepts ([`Partition::Auto`], `Options::threads`, the C
/// ABI's `threads`): a larger count is an [`ErrorKind::Threads`] error, never a
/// wrapped product (a C caller's `(size_t)-1`, for instance). No machine qgemm runs on
/// has this many cores; a call never uses more threads than it has tasks anyway.
///
/// [`ErrorKind::Threads`]: crate::ErrorKind::Threads
pub const MAX_THREADS: usize = 4096;

/// Checks a thread count against `1..=MAX_THREADS`; `what` names it in the message.
pub(crate) fn check_threads(threads: usize, what: &str) -> Result<()> {
    if threads == 0 {
        bail!(Threads, "{what} = 0; at least one thread is needed");
    }
    if threads > MAX_THREADS {
        bail!(Threads, "{what} = {threads}, above the most accepted ({MAX_THREADS})");
    }
    Ok(())
}

/// How a call is cut into tasks, each a tile of the output (see [`GemmTasks`] and
/// [`Conv2dTasks`]).
///
/// [`GemmTasks`]: crate::GemmTasks
/// [`Conv2dTasks`]: crate::Conv2dTasks
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Partition {
    /// qgemm's grid for `threads` threads (`1..=`[`MAX_THREADS`]): tiles over rows and columns, rows
    /// first (each column cut repeats the packing of A), at most one task per thread
    /// up to 4 threads and four per thread past that (taken in turn, so that one
    /// thread held up delays the call by a quarter of its share),
    /// each at least [`MIN_TASK_MACS`] multiply-accumulates, so small problems stay
    /// whole. One thread gives one task.
    Auto {
        /// The threads the tasks will run on.
        threads: usize,
    },
    /// The grid with these cuts: `rows` runs from 0 to M (GEMM rows, or convolution
    /// output pixels `N·OH·OW`) and `cols` from 0 to N (output channels), each
    /// non-decreasing, so a cut may repeat (an empty task). Tasks are numbered row by
    /// row: task `i · (cols.len() − 1) + j` is rows `rows[i]..rows[i + 1]` by columns
    /// `cols[j]..cols[j + 1]`.
    Grid {
        /// Row bounds, from 0 to M.
        rows: Vec<usize>,
        /// Column bounds, from 0 to N.
        cols: Vec<usize>,
    },
}

impl Partition {
    /// [`Partition::Auto`] for `threads` threads.
    pub fn auto(threads: usize) -> Partition {
        Partition::Auto { threads }
    }

    /// [`Partition::Grid`] with these row and column bounds.
    pub fn grid(rows: impl Into<Vec<usize>>, cols: impl Into<Vec<usize>>) -> Partition {
        Partition::Grid { rows: rows.into(), cols: cols.into() }
    }
}

/// One task's tile of the output: rows `rows` by columns `cols`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tile {
    /// Output rows (GEMM rows, or convolution output pixels).
    pub rows: std::ops::Range<usize>,
    /// Output columns (output channels).
    pub cols: std::ops::Range<usize>,
}

/// How a call's work divides, for [`Partition::Auto`]: rows in multiples of
/// `row_unit`, columns in multiples of `col_unit` (where the kernels' tiles and blocks
/// start), `row_block` rows per packed block of A, `k` multiply-accumulates per output
/// element.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub row_unit: usize,
    pub col_unit: usize,
    pub row_block: usize,
}

/// A partition made concrete for one call: the cuts, and which tasks have started.
/// Allocates nothing for [`Partition::Auto`] (at most 256 tasks when `threads` is at
/// most 256) nor for a caller's grid of at most 256 tasks, so a warm workspace keeps
/// calls allocation-free.
#[derive(Debug)]
pub(crate) struct Grid<'a> {
    rows: Cuts<'a>,
    cols: Cuts<'a>,
    tasks: usize,
    started: Flags,
}

/// The bounds along one side of the grid.
#[derive(Clone, Copy, Debug)]
enum Cuts<'a> {
    /// [`even_cuts`]`(len, unit, pieces)`, computed when asked.
    Even { len: usize, unit: usize, pieces: usize },
    /// The caller's bounds.
    Given(&'a [usize]),
}

impl Cuts<'_> {
    /// The number of pieces.
    fn pieces(&self) -> usize {
        match *self {
            Cuts::Even { pieces, .. } => pieces,
            Cuts::Given(b) => b.len() - 1,
        }
    }

    /// Bound `i`, for `i <= pieces()`.
    fn bound(&self, i: usize) -> usize {
        match *self {
            Cuts::Even { len, unit, pieces } => even_bound(len, unit, pieces, i),
            Cuts::Given(b) => b[i],
        }
    }
}

/// One flag per task, inline for up to 256 tasks.
#[derive(Debug)]
struct Flags {
    inline: [AtomicU64; 4],
    heap: Vec<AtomicU64>,
}

impl Flags {
    fn new(tasks: usize) -> Flags {
        let words = tasks.div_ceil(64);
        let heap = if words > 4 { (0..words).map(|_| AtomicU64::new(0)).collect() } else { Vec::new() };
        Flags { inline: Default::default(), heap }
    }

    /// Sets flag `i`, returning whether it was set already.
    fn set(&self, i: usize) -> bool {
        let word = if self.heap.is_empty() { &self.inline[i / 64] } else { &self.heap[i / 64] };
        let bit = 1u64 << (i % 64);
        word.fetch_or(bit, Ordering::AcqRel) & bit != 0
    }
}

impl<'a> Grid<'a> {
    /// The grid of `partition` for a call of `shape`, checked.
    pub(crate) fn new(partition: &'a Partition, shape: Shape) -> Result<Grid<'a>> {
        let (rows, cols) = match partition {
            Partition::Auto { threads } => {
                check_threads(*threads, "Partition::Auto { threads }")?;
                let (tm, tn) = auto_pieces(shape, *threads);
                (
                    Cuts::Even { len: shape.m, unit: shape.row_unit, pieces: tm },
                    Cuts::Even { len: shape.n, unit: shape.col_unit, pieces: tn },
                )
            }
            Partition::Grid { rows, cols } => {
                check_cuts("rows", rows, shape.m)?;
                check_cuts("cols", cols, shape.n)?;
                (Cuts::Given(rows), Cuts::Given(cols))
            }
        };
        let Some(tasks) = rows.pieces().checked_mul(cols.pieces()) else {
            bail!(Overflow, "partition: {} × {} tasks overflow usize", rows.pieces(), cols.pieces())
        };
        Ok(Grid { rows, cols, tasks, started: Flags::new(tasks) })
    }

    /// The number of tasks.
    pub(crate) fn len(&self) -> usize {
        self.tasks
    }

    /// Task `index`'s tile, if there is such a task.
    pub(crate) fn tile(&self, index: usize) -> Option<Tile> {
        if index >= self.tasks {
            return None;
        }
        let per_row = self.cols.pieces();
        let (i, j) = (index / per_row, index % per_row);
        Some(Tile {
            rows: self.rows.bound(i)..self.rows.bound(i + 1),
            cols: self.cols.bound(j)..self.cols.bound(j + 1),
        })
    }

    /// Task `index`'s tile, marking the task as started: each task runs at most once,
    /// which is what makes the tiles handed out disjoint.
    ///
    /// # Errors
    /// An index past the last task, or a task that already started.
    pub(crate) fn start(&self, index: usize) -> Result<Tile> {
        let Some(tile) = self.tile(index) else { bail!(Task, "task {index} of a call cut into {} tasks", self.tasks) };
        if self.started.set(index) {
            bail!(Task, "task {index} already ran (each task runs once)");
        }
        Ok(tile)
    }
}

fn check_cuts(name: &str, cuts: &[usize], end: usize) -> Result<()> {
    match (cuts.first(), cuts.last()) {
        (Some(0), Some(&last)) if last == end && cuts.len() >= 2 => {}
        _ => bail!(Partition, "partition {name} {cuts:?}: must run from 0 to {end}, with at least two bounds"),
    }
    if let Some(w) = cuts.windows(2).find(|w| w[0] > w[1]) {
        bail!(Partition, "partition {name} {cuts:?}: decreasing at {} > {}", w[0], w[1]);
    }
    Ok(())
}

/// [`Partition::Auto`]'s grid, as pieces along rows and along columns: at most one
/// task per thread up to 4 threads and four past that, each of at least
/// [`MIN_TASK_MACS`], that minimizes the estimated time of the slowest thread.
///
/// A task of `r × c` outputs costs about `k · (r·c + 32·r + 8·c·⌈r / row_block⌉)`
/// multiply-accumulates' time: its products; packing its rows of A (about 32 MACs'
/// time per byte, measured as ~4% of a 1024³ GEMM, where A is packed once per 1024
/// columns); streaming its columns of B once per row block (about 8 per byte). So
/// cuts go across rows first, and across columns where there are too few rows.
fn auto_pieces(s: Shape, threads: usize) -> (usize, usize) {
    let macs = (s.m as u128) * (s.n as u128) * (s.k.max(1) as u128);
    let by_work = usize::try_from(macs / MIN_TASK_MACS as u128).unwrap_or(usize::MAX).max(1);
    // Past a few threads, about four tasks per thread, taken in turn: one thread held
    // up (by the OS, another process, a helper that starts late) then delays the call
    // by a quarter of its share, not all of it. Measured on the 16-core Xeon test host
    // at 16 threads: +8% at 2048³, +35% at 1024³, +14% on r50_3x3; on 2 threads the
    // extra cuts cost more than they save (r50_late3x3: 1.64× against 1.85×).
    let per_thread = if threads > 4 { 4 } else { 1 };
    let most = (threads * per_thread).min(by_work);
    let (row_units, col_units) = (s.m.div_ceil(s.row_unit.max(1)), s.n.div_ceil(s.col_unit.max(1)));
    if most <= 1 || row_units * col_units <= 1 {
        return (1, 1);
    }
    let cost = |tm: usize, tn: usize| {
        let r = (row_units.div_ceil(tm) * s.row_unit).min(s.m) as f64;
        let c = (col_units.div_ceil(tn) * s.col_unit).min(s.n) as f64;
        // With one task per thread, whole waves; with more, the tasks' share plus one
        // task for the thread that finishes last.
        let waves =
            if per_thread == 1 { (tm * tn).div_ceil(threads) as f64 } else { (tm * tn) as f64 / threads as f64 + 1.0 };
        waves * (r * c + 32.0 * r + 8.0 * c * (r / s.row_block.max(1) as f64).ceil())
    };
    let mut best = (1, 1, cost(1, 1));
    for tm in 1..=most.min(row_units) {
        for tn in 1..=(most / tm).min(col_units) {
            let c = cost(tm, tn);
            if c < best.2 {
                best = (tm, tn, c);
            }
        }
    }
    (best.0, best.1)
}

/// Bound `i` of `pieces` pieces over `0..len`, in multiples of `unit` (but the last),
/// as even as that allows (`pieces` at most the number of units, at least 1).
fn even_bound(len: usize, unit: usize, pieces: usize, i: usize) -> usize {
    let unit = unit.max(1);
    let units = len.div_ceil(unit);
    (units * i / pieces).saturating_mul(unit).min(len)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::workspace::Workspace;

    fn shape(m: usize, n: usize, k: usize) -> Shape {
        Shape { m, n, k, row_unit: 8, col_unit: 48, row_block: 128 }
    }

    fn tasks(m: usize, n: usize, k: usize, threads: usize) -> (usize, usize) {
        auto_pieces(shape(m, n, k), threads)
    }

    fn cuts(m: usize, n: usize, k: usize, threads: usize) -> (Vec<usize>, Vec<usize>) {
        let partition = Partition::auto(threads);
        let grid = Grid::new(&partition, shape(m, n, k)).unwrap();
        let rows = (0..=grid.rows.pieces()).map(|i| grid.rows.bound(i)).collect();
        let cols = (0..=grid.cols.pieces()).map(|i| grid.cols.bound(i)).collect();
        (rows, cols)
    }

    #[test]
    fn auto_cuts_cover_the_output_in_units() {
        for &(m, n, k, t) in &[(1024, 1024, 1024, 2), (2048, 2048, 2048, 16), (100, 50, 7, 3), (1, 4096, 4096, 16)] {
            let (rows, cols) = cuts(m, n, k, t);
            assert_eq!((rows[0], *rows.last().unwrap(), cols[0], *cols.last().unwrap()), (0, m, 0, n));
            assert!(rows.windows(2).all(|w| w[0] < w[1]) && cols.windows(2).all(|w| w[0] < w[1]));
            assert!(rows[1..rows.len() - 1].iter().all(|r| r % 8 == 0), "{rows:?}");
            assert!(cols[1..cols.len() - 1].iter().all(|c| c % 48 == 0), "{cols:?}");
            let per_thread = if t > 4 { 4 } else { 1 };
            assert!((rows.len() - 1) * (cols.len() - 1) <= t * per_thread);
        }
    }

    #[test]
    fn auto_cuts_split_rows_first_and_keep_small_problems_whole() {
        assert_eq!(tasks(1024, 1024, 1024, 2), (2, 1));
        // Past 4 threads, up to four tasks each: rows of one row block (128), then
        // columns.
        let (tm, tn) = tasks(2048, 2048, 2048, 16);
        assert!(tm == 16 && (2..=4).contains(&tn), "{tm} × {tn}");
        // 128 rows are one row block: mostly the columns are cut.
        let (tm, tn) = tasks(128, 3072, 768, 16);
        assert!((16..=64).contains(&(tm * tn)) && tn >= 8, "{tm} × {tn}");
        // One row: columns only.
        assert_eq!(tasks(1, 4096, 4096, 16).0, 1);
        // 16·16·16 = 4096 MACs, under MIN_TASK_MACS: one task whatever the threads.
        assert_eq!(tasks(16, 16, 16, 8), (1, 1));
        // 64K MACs per task at most 2 tasks' worth here.
        assert_eq!(tasks(64, 64, 32, 8).0 * tasks(64, 64, 32, 8).1, 2);
        assert_eq!(tasks(1024, 1024, 1024, 1), (1, 1));
    }

    #[test]
    fn grids_are_checked() {
        let s = shape(10, 20, 3);
        assert_eq!(Grid::new(&Partition::grid([0, 4, 4, 10], [0, 20]), s).unwrap().len(), 3);
        for bad in [
            Partition::grid([0, 10], [0, 19]),
            Partition::grid([1, 10], [0, 20]),
            Partition::grid([0, 6, 5, 10], [0, 20]),
            Partition::grid([10], [0, 20]),
            Partition::grid([], [0, 20]),
        ] {
            assert_eq!(Grid::new(&bad, s).unwrap_err().kind(), crate::ErrorKind::Partition, "{bad:?}");
        }
        assert_eq!(Grid::new(&Partition::auto(0), s).unwrap_err().kind(), crate::ErrorKind::Threads);
    }

    #[test]
    fn each_task_starts_once() {
        let partition = Partition::grid([0, 3, 10], [0, 5, 20]);
        let grid = Grid::new(&partition, shape(10, 20, 3)).unwrap();
        assert_eq!(grid.len(), 4);
        assert_eq!(grid.tile(3), Some(Tile { rows: 3..10, cols: 5..20 }));
        assert_eq!(grid.start(1).unwrap(), Tile { rows: 0..3, cols: 5..20 });
        assert_eq!(grid.start(1).unwrap_err().kind(), crate::ErrorKind::Task);
        assert_eq!(grid.start(4).unwrap_err().kind(), crate::ErrorKind::Task);
        // Past 256 tasks the flags live on the heap.
        let partition = Partition::grid((0..=300).collect::<Vec<_>>(), [0, 20]);
        let grid = Grid::new(&partition, shape(300, 20, 3)).unwrap();
        assert!(grid.start(299).is_ok() && grid.start(299).is_err() && grid.start(298).is_ok());
    }

    /// Calls from two threads at once: one holds the helpers' exchange while the other
    /// lets its helpers in through a gate (whose helpers may come after it returned).
    #[test]
    fn concurrent_calls_run_each_task_once() {
        let calls = if cfg!(miri) { 4 } else { 200 };
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    let mut workspace = Workspace::new();
                    for _ in 0..calls {
                        let counts: Vec<AtomicUsize> = (0..6).map(|_| AtomicUsize::new(0)).collect();
                        run_tasks(6, Threads::count(3), &mut workspace, &Default::default(), &|i, _| {
                            counts[i].fetch_add(1, Ordering::Relaxed);
                        })
                        .unwrap();
                        assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1));
                    }
                });
            }
        });
    }

    #[test]
    fn run_tasks_runs_each_task_once_on_any_thread_count() {
        for threads in [1, 2, 3, 7] {
            for tasks in [0, 1, 5, 40] {
                let counts: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                run_tasks(tasks, Threads::count(threads), &mut Workspace::new(), &Default::default(), &|i, _| {
                    counts[i].fetch_add(1, Ordering::Relaxed);
                })
                .unwrap();
                assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1), "{threads} threads, {tasks} tasks");
            }
        }
    }
}
