//! The C ABI's threads: calls on qgemm's own threads, workspaces, and calls cut into
//! tasks for an engine's own thread pool.

use std::cell::UnsafeCell;
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{
    ConvCall, Failure, GemmCall, QGEMM_STATUS_NULL_POINTER, QGEMM_STATUS_WORKSPACE_BUSY, boundary, conv_call, deref,
    fail, free_handle, gemm_call, qgemm_activations, qgemm_conv_input, qgemm_conv2d_params, qgemm_output,
    qgemm_output_stage, qgemm_packed_conv_weights, qgemm_packed_weights, qgemm_status, slice,
};
use crate::{Conv2dTasks, GemmTasks, Options, OutputStage, Partition, Workspace};

/// Scratch memory for threaded calls and tasks, kept across calls so that they
/// allocate nothing once it has grown (`qgemm::Workspace`: at most 1 MiB per thread).
/// One call at a time may use a workspace: a call that finds it in use by a call on
/// another thread fails with `QGEMM_STATUS_WORKSPACE_BUSY` and writes nothing (rather
/// than sharing its buffers and computing garbage).
#[derive(Debug)]
pub struct qgemm_workspace {
    /// Set while a call holds the workspace ([`hold`]).
    busy: AtomicBool,
    /// Reached only by the call that set `busy`.
    workspace: UnsafeCell<Workspace>,
}

/// The workspace of one call: a handle's, held (marked busy) until dropped, or a fresh
/// one for this call.
pub(super) struct Held<'a> {
    handle: Option<&'a qgemm_workspace>,
    fresh: Workspace,
}

impl Held<'_> {
    /// The workspace, for this call alone.
    pub(super) fn get(&mut self) -> &mut Workspace {
        match self.handle {
            // SAFETY: this call set `busy` ([`hold`]) and clears it only when dropped,
            // so no other call reaches the workspace meanwhile; `&mut self` keeps this
            // borrow the only one of this call.
            Some(handle) => unsafe { &mut *handle.workspace.get() },
            None => &mut self.fresh,
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Some(handle) = self.handle {
            handle.busy.store(false, Ordering::Release);
        }
    }
}

/// `*ptr` held for one call, or a fresh workspace when `ptr` is null; a handle in use
/// by another call is `QGEMM_STATUS_WORKSPACE_BUSY`.
///
/// # Safety
/// A non-null `ptr` is a live workspace handle (not freed while this call runs).
pub(super) unsafe fn hold<'a>(ptr: *mut qgemm_workspace) -> Result<Held<'a>, Failure> {
    // SAFETY: the caller's contract; only the atomic is read through this shared
    // reference until the flag is won.
    let handle = unsafe { ptr.cast_const().as_ref() };
    if let Some(h) = handle
        && h.busy.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_err()
    {
        return fail(
            QGEMM_STATUS_WORKSPACE_BUSY,
            "the workspace is in use by a call on another thread: one call at a time may use a workspace",
        );
    }
    Ok(Held { handle, fresh: Workspace::new() })
}

/// A call checked and cut into tasks, for an engine's own thread pool
/// (`qgemm::GemmTasks`, `qgemm::Conv2dTasks`): run each task `0..count` once, with
/// [`qgemm_tasks_run`], on any thread and in any order. It borrows the call's
/// activations, weights handle and output until [`qgemm_tasks_free`]; the output is
/// complete once every task has run.
#[derive(Debug)]
pub struct qgemm_tasks {
    /// Borrows `_owned` (and the caller's buffers): dropped first, by hand.
    tasks: ManuallyDrop<Tasks>,
    /// Only held, to be freed after the tasks.
    _owned: Owned,
}

#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per handle, which is boxed
enum Tasks {
    Gemm(GemmTasks<'static>),
    Conv(Conv2dTasks<'static>),
}

/// The output stage and partition a [`qgemm_tasks`] converted from C, on the heap so
/// that the tasks can borrow them; freed when dropped.
#[derive(Debug)]
struct Owned {
    stage: *mut OutputStage,
    partition: *mut Partition,
}

impl Owned {
    fn new(stage: OutputStage, partition: Partition) -> Owned {
        Owned { stage: Box::into_raw(Box::new(stage)), partition: Box::into_raw(Box::new(partition)) }
    }

    /// The stage and partition, for as long as the tasks that borrow them.
    ///
    /// # Safety
    /// The references must not outlive `self`.
    unsafe fn parts(&self) -> (&'static OutputStage, &'static Partition) {
        // SAFETY: both come from `Box::into_raw` and are freed only when `self` drops,
        // which the caller's contract puts after every use of the references.
        unsafe { (&*self.stage, &*self.partition) }
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        // SAFETY: both come from `Box::into_raw` in `new`, and are freed once, here.
        unsafe {
            drop(Box::from_raw(self.stage));
            drop(Box::from_raw(self.partition));
        }
    }
}

impl Drop for qgemm_tasks {
    fn drop(&mut self) {
        // SAFETY: dropped once, here, before `_owned` (dropped after this function) frees
        // what the tasks borrow.
        unsafe { ManuallyDrop::drop(&mut self.tasks) }
    }
}

// The handle is shared by the pool's threads: what it holds must be `Sync`.
const _: () = {
    const fn sync<T: Sync>() {}
    sync::<GemmTasks<'static>>();
    sync::<Conv2dTasks<'static>>();
};

/// How a call is cut into tasks: qgemm's grid for `threads` threads when `row_bounds`
/// is null, else the caller's grid (`qgemm::Partition::Grid`): bounds from 0 to M (GEMM
/// rows, or convolution output pixels N·OH·OW) and from 0 to N (output channels),
/// non-decreasing. Task `i·(col_bounds_len − 1) + j` is rows `row_bounds[i]..[i + 1]`
/// by columns `col_bounds[j]..[j + 1]`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct qgemm_partition {
    /// The threads the tasks will run on, 1 to 4096 (qgemm's grid only).
    pub threads: usize,
    /// Row bounds, or null for qgemm's grid.
    pub row_bounds: *const usize,
    /// Elements at `row_bounds`.
    pub row_bounds_len: usize,
    /// Column bounds (ignored for qgemm's grid).
    pub col_bounds: *const usize,
    /// Elements at `col_bounds`.
    pub col_bounds_len: usize,
}

/// # Safety
/// The bounds' pointers satisfy [`slice`] for their lengths.
unsafe fn to_partition(p: &qgemm_partition) -> Result<Partition, Failure> {
    if p.row_bounds.is_null() {
        return Ok(Partition::auto(p.threads));
    }
    // SAFETY: the caller's contract, for each pointer and its length.
    let (rows, cols) = unsafe {
        (
            slice(p.row_bounds, p.row_bounds_len, "partition.row_bounds")?,
            slice(p.col_bounds, p.col_bounds_len, "partition.col_bounds")?,
        )
    };
    Ok(Partition::grid(rows, cols))
}

/// Makes a workspace, written to `*out`. Release it with [`qgemm_workspace_free`].
///
/// # Safety
/// `out` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qgemm_workspace_new(out: *mut *mut qgemm_workspace) -> qgemm_status {
    boundary(|| {
        if out.is_null() {
            return fail(QGEMM_STATUS_NULL_POINTER, "out is null");
        }
        let workspace = qgemm_workspace { busy: AtomicBool::new(false), workspace: UnsafeCell::new(Workspace::new()) };
        // SAFETY: `out` is non-null and writable (the caller's contract).
        unsafe { out.write(Box::into_raw(Box::new(workspace))) };
        Ok(())
    })
}

/// Releases a workspace; null does nothing.
///
/// # Safety
/// `workspace` must be null or a handle from [`qgemm_workspace_new`] not yet freed, and
/// no call may be using it: freeing it under a running call is a use-after-free
/// (undefined behaviour, not detected).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qgemm_workspace_free(workspace: *mut qgemm_workspace) {
    // SAFETY: the caller's contract.
    unsafe { free_handle(workspace) }
}

/// [`qgemm_gemm`](super::qgemm_gemm) on up to `threads` threads (1 to 4096, the
/// caller's included; qgemm's helper threads; any other count is
/// `QGEMM_STATUS_THREADS`), in `workspace` (null: a fresh one for this call). The
/// result is byte-identical for any thread count.
///
/// # Safety
/// As [`qgemm_gemm`](super::qgemm_gemm); `workspace` is null or a live handle, not
/// freed during the call (a handle in use by a call on another thread fails the call
/// with `QGEMM_STATUS_WORKSPACE_BUSY`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qgemm_gemm_threaded(
    a: *const qgemm_activations,
    weights: *const qgemm_packed_weights,
    stage: *const qgemm_output_stage,
    c: *const qgemm_output,
    threads: usize,
    workspace: *mut qgemm_workspace,
) -> qgemm_status {
    // SAFETY: the caller's contract, passed on.
    boundary(|| unsafe { super::gemm(a, weights, stage, c, threads, workspace) })
}

/// [`qgemm_conv2d`](super::qgemm_conv2d) on up to `threads` threads (1 to 4096; any
/// other count is `QGEMM_STATUS_THREADS`), in `workspace` (null: a fresh one for this
/// call). The result is byte-identical for any thread count.
///
/// # Safety
/// As [`qgemm_conv2d`](super::qgemm_conv2d); `workspace` is null or a live handle,
/// not freed during the call (a handle in use by a call on another thread fails the
/// call with `QGEMM_STATUS_WORKSPACE_BUSY`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qgemm_conv2d_threaded(
    input: *const qgemm_conv_input,
    weights: *const qgemm_packed_conv_weights,
    params: *const qgemm_conv2d_params,
    stage: *const qgemm_output_stage,
    output: *const qgemm_output,
    threads: usize,
    workspace: *mut qgemm_workspace,
) -> qgemm_status {
    // SAFETY: the caller's contract, passed on.
    boundary(|| unsafe { super::conv2d(input, weights, params, stage, output, threads, workspace) })
}

/// Checks a GEMM's arguments and cuts it by `partition` into a new tasks handle,
/// written to `*out`. Nothing is written to the output yet.
///
/// # Safety
/// As [`qgemm_gemm`](super::qgemm_gemm), and the activations, the weights handle and
/// the output must stay valid, and the output unread and unwritten by anything else,
/// until [`qgemm_tasks_free`]; `out` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qgemm_gemm_tasks_new(
    a: *const qgemm_activations,
    weights: *const qgemm_packed_weights,
    stage: *const qgemm_output_stage,
    c: *const qgemm_output,
    partition: *const qgemm_partition,
    out: *mut *mut qgemm_tasks,
) -> qgemm_status {
    boundary(|| {
        // SAFETY: the caller's contract (valid until the handle is freed).
        let call: GemmCall<'static> = unsafe { gemm_call(a, weights, stage, c)? };
        // SAFETY: the caller's contract.
        let p = unsafe { deref(partition, "partition")? };
        if out.is_null() {
            return fail(QGEMM_STATUS_NULL_POINTER, "out is null");
        }
        // SAFETY: as above.
        let owned = Owned::new(call.stage, unsafe { to_partition(p)? });
        // SAFETY: the tasks live in the handle beside `owned`, and are dropped first.
        let (stage, partition) = unsafe { owned.parts() };
        let tasks = GemmTasks::new(&call.activations, call.weights, stage, call.output, partition)?;
        let handle = qgemm_tasks { tasks: ManuallyDrop::new(Tasks::Gemm(tasks)), _owned: owned };
        // SAFETY: `out` is non-null and writable (the caller's contract).
        unsafe { out.write(Box::into_raw(Box::new(handle))) };
        Ok(())
    })
}

/// Checks a convolution's arguments and cuts it by `partition` (rows: output pixels,
/// columns: output channels) into a new tasks handle, written to `*out`. Nothing is
/// written to the output yet.
///
/// # Safety
/// As [`qgemm_conv2d`](super::qgemm_conv2d), and the input, the weights handle and
/// the output must stay valid, and the output unread and unwritten by anything else,
/// until [`qgemm_tasks_free`]; `out` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qgemm_conv2d_tasks_new(
    input: *const qgemm_conv_input,
    weights: *const qgemm_packed_conv_weights,
    params: *const qgemm_conv2d_params,
    stage: *const qgemm_output_stage,
    output: *const qgemm_output,
    partition: *const qgemm_partition,
    out: *mut *mut qgemm_tasks,
) -> qgemm_status {
    boundary(|| {
        // SAFETY: the caller's contract (valid until the handle is freed).
        let call: ConvCall<'static> = unsafe { conv_call(input, weights, params, stage, output)? };
        // SAFETY: the caller's contract.
        let part = unsafe { deref(partition, "partition")? };
        if out.is_null() {
            return fail(QGEMM_STATUS_NULL_POINTER, "out is null");
        }
        // SAFETY: as above.
        let owned = Owned::new(call.stage, unsafe { to_partition(part)? });
        // SAFETY: the tasks live in the handle beside `owned`, and are dropped first.
        let (stage, partition) = unsafe { owned.parts() };
        let tasks = Conv2dTasks::new(&call.input, call.weights, &call.params, stage, call.output, partition)?;
        let handle = qgemm_tasks { tasks: ManuallyDrop::new(Tasks::Conv(tasks)), _owned: owned };
        // SAFETY: `out` is non-null and writable (the caller's contract).
        unsafe { out.write(Box::into_raw(Box::new(handle))) };
        Ok(())
    })
}

/// The number of tasks, written to `*out`.
///
/// # Safety
/// `tasks` must be null or a live handle; `out` null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qgemm_tasks_count(tasks: *const qgemm_tasks, out: *mut usize) -> qgemm_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let tasks = unsafe { deref(tasks, "tasks")? };
        if out.is_null() {
            return fail(QGEMM_STATUS_NULL_POINTER, "out is null");
        }
        let count = match &*tasks.tasks {
            Tasks::Gemm(t) => t.len(),
            Tasks::Conv(t) => t.len(),
        };
        // SAFETY: `out` is non-null and writable (the caller's contract).
        unsafe { out.write(count) };
        Ok(())
    })
}

/// Runs task `index` on the calling thread, in `workspace` (null: a fresh one for this
/// task). Any number of threads may run tasks of one handle at once, each with its own
/// workspace.
///
/// Fails with `QGEMM_STATUS_TASK` for an index past the last task or a task that
/// already ran, writing nothing.
///
/// # Safety
/// `tasks` must be null or a live handle, not freed until this call returns;
/// `workspace` null or a live handle, not freed during the call (a handle in use by a
/// call on another thread fails with `QGEMM_STATUS_WORKSPACE_BUSY`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qgemm_tasks_run(
    tasks: *const qgemm_tasks,
    index: usize,
    workspace: *mut qgemm_workspace,
) -> qgemm_status {
    boundary(|| {
        // SAFETY: the caller's contract.
        let tasks = unsafe { deref(tasks, "tasks")? };
        // SAFETY: the caller's contract.
        let mut held = unsafe { hold(workspace)? };
        match &*tasks.tasks {
            Tasks::Gemm(t) => t.run(index, held.get())?,
            Tasks::Conv(t) => t.run(index, held.get())?,
        }
        Ok(())
    })
}

/// Releases a tasks handle (whether or not its tasks ran); null does nothing.
///
/// # Safety
/// `tasks` must be null or a handle from `qgemm_*_tasks_new` not yet freed. Free it
/// only after every `qgemm_tasks_run` call on it, on every thread, has returned:
/// freeing it while a task runs is a use-after-free (undefined behaviour, which qgemm
/// cannot detect; the running task may write freed memory).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qgemm_tasks_free(tasks: *mut qgemm_tasks) {
    // SAFETY: the caller's contract.
    unsafe { free_handle(tasks) }
}

/// The options a threaded call runs with.
pub(super) fn options(threads: usize) -> Options {
    Options::new().with_threads(threads)
}
