//! A warm [`Workspace`] makes single-threaded calls allocation-free: each conv path and
//! a GEMM run twice in one workspace, and the second run's heap allocations are counted
//! by a wrapping global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use qgemm::{
    Activations, Channelwise, Conv2dParams, ConvInput, ConvWeights, OutputMatrix, OutputStage, PackedConvWeights,
    PackedWeights, Requantization, Requantize, Weights, Workspace,
};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to the system allocator unchanged; the counter is a
// side effect that touches no allocation.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Heap allocations made by `f`.
fn allocations(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    f();
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

#[test]
fn a_warm_workspace_allocates_nothing() {
    let stage = OutputStage::requantized(Requantize::from_i32(
        Requantization::Float { scale: Channelwise::PerTensor(0.001) },
        10,
        0,
        255,
    ));
    let p = Conv2dParams::new;
    let convs = [
        p([1, 9, 9, 16], 24, [1, 1]),                                          // pointwise
        p([1, 9, 9, 16], 24, [3, 3]).with_padding(1, 1, 1, 1),                 // im2col
        p([1, 9, 9, 16], 24, [1, 1]).with_stride(2, 2),                        // strided 1×1
        p([1, 9, 9, 16], 16, [3, 3]).with_padding(1, 1, 1, 1).with_groups(16), // depthwise
        p([1, 9, 9, 16], 16, [3, 3]).with_padding(1, 1, 1, 1).with_groups(4),  // grouped
    ];
    for &isa in qgemm::available_isas() {
        let options = qgemm::Options::new().with_isa(isa);
        for params in convs {
            let cg = params.in_channels / params.groups;
            let weights: Vec<i8> = (0..params.out_channels * 9 * cg).map(|i| (i * 37) as i8).collect();
            let weights = &weights[..params.out_channels * params.kernel_height * params.kernel_width * cg];
            let packed = PackedConvWeights::for_isa(
                isa,
                ConvWeights::new(weights, &params).with_zero_point(Channelwise::PerTensor(-3)),
            )
            .unwrap();
            let input: Vec<u8> = (0..9 * 9 * params.in_channels).map(|i| (i * 11) as u8).collect();
            let rows = params.out_height().unwrap() * params.out_width().unwrap();
            let mut out = vec![0u8; rows * params.out_channels];
            let mut workspace = Workspace::new();
            let mut run = || {
                let c = OutputMatrix::u8(&mut out, rows, params.out_channels);
                let x = ConvInput::new(&input, 7);
                qgemm::conv2d_in(&x, &packed, &params, &stage, c, &options, &mut workspace).unwrap();
            };
            run();
            let path = packed.path(&params).unwrap();
            assert_eq!(allocations(&mut run), 0, "{path:?} conv on {isa}: {params:?}");
        }

        let (m, k, n) = (20, 300, 40);
        let a = vec![200u8; m * k];
        let b = vec![-5i8; k * n];
        let zp = Channelwise::PerTensor(1);
        let packed = PackedWeights::for_isa(isa, Weights::kxn(&b, k, n).with_zero_point(zp.clone())).unwrap();
        let mut out = vec![0u8; m * n];
        let mut workspace = Workspace::new();
        let mut run = || {
            let acts = Activations::new(&a, m, k, 3);
            qgemm::gemm_in(&acts, &packed, &stage, OutputMatrix::u8(&mut out, m, n), &options, &mut workspace).unwrap();
        };
        run();
        assert_eq!(allocations(&mut run), 0, "GEMM on {isa}");
    }
}
