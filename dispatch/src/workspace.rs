//! Scratch memory the caller can own and reuse across calls.

use qgemm_kernels::driver::{SCRATCH_BYTES, Scratch, ScratchNeeds};

use crate::error::{Error, ErrorKind, Result};

/// The most scratch one thread of a GEMM or convolution holds, in bytes: 1 MiB,
/// whatever the image size, K or channel count (packed activations of one row block,
/// accumulators of one block, one K block of gathered convolution taps, and the
/// depthwise pair rows; see the README's "Convolution" section). A [`Workspace`] used
/// with `t` threads holds at most `t` times this.
pub const SCRATCH_BYTES_PER_THREAD: usize = SCRATCH_BYTES;

/// Scratch buffers for [`gemm_in`](crate::gemm_in) and [`conv2d_in`](crate::conv2d_in),
/// one set per thread. They grow to what the calls need (never past
/// [`SCRATCH_BYTES_PER_THREAD`] each) and are kept, so that an engine that reuses one
/// workspace allocates nothing per call once it is warm. The calls without `_in`
/// use a fresh workspace each time.
///
/// A call reserves what it needs before it runs any task, fallibly: if that cannot
/// be allocated, it returns [`ErrorKind::OutOfMemory`] with its output untouched
/// (what was reserved so far stays here), never an abort.
///
/// A workspace holds no data between calls that affects results.
#[derive(Debug, Default)]
pub struct Workspace {
    threads: Vec<Scratch>,
}

impl Workspace {
    /// An empty workspace; it allocates on first use.
    pub fn new() -> Workspace {
        Workspace::default()
    }

    /// Bytes held now, all threads together.
    pub fn heap_size(&self) -> usize {
        self.threads.iter().map(Scratch::heap_size).sum()
    }

    /// Bytes held now by the busiest thread.
    pub fn max_thread_heap_size(&self) -> usize {
        self.threads.iter().map(Scratch::heap_size).max().unwrap_or(0)
    }

    /// Frees every buffer.
    pub fn clear(&mut self) {
        self.threads = Vec::new();
    }

    /// Gives `n` per-thread scratch sets room for `needs`, allocated fallibly: a call
    /// that runs in them (see [`Workspace::sets`]) allocates nothing more.
    ///
    /// # Errors
    /// [`ErrorKind::OutOfMemory`](crate::ErrorKind::OutOfMemory) if an allocation
    /// failed; what was reserved so far stays in the workspace.
    pub(crate) fn reserve(&mut self, n: usize, needs: &ScratchNeeds) -> Result<()> {
        let failed = |e| {
            let bytes = needs.bytes();
            Error::new(
                ErrorKind::OutOfMemory,
                format!("workspace: cannot allocate {bytes} bytes of scratch per thread for {n} threads ({e})"),
            )
        };
        if self.threads.len() < n {
            self.threads.try_reserve_exact(n - self.threads.len()).map_err(failed)?;
            self.threads.resize_with(n, Scratch::new);
        }
        for scratch in &mut self.threads[..n] {
            scratch.try_reserve(needs).map_err(failed)?;
        }
        Ok(())
    }

    /// The first `n` scratch sets, which [`Workspace::reserve`] made.
    pub(crate) fn sets(&mut self, n: usize) -> &mut [Scratch] {
        &mut self.threads[..n]
    }
}
