//! Scratch memory the caller can own and reuse across calls.

use qgemm_kernels::driver::{SCRATCH_BYTES, Scratch};

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

    /// At least `n` per-thread scratch sets.
    pub(crate) fn threads(&mut self, n: usize) -> &mut [Scratch] {
        if self.threads.len() < n {
            self.threads.resize_with(n, Scratch::new);
        }
        &mut self.threads[..n]
    }
}
