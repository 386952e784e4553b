//! Rust peers measured in-process beside qgemm: rten-gemm (u8×i8 → i32, with zero points)
//! and tract-linalg (i8×i8 → i32). Both produce raw i32 accumulators, so each is checked
//! against the reference's i32 result of the same problem.
//!
//! tract has no u8 activations: its input is `a ⊕ 0x80` (that is, `a − 128` as i8) and
//! it applies no zero point, so its product equals the reference accumulators of the same
//! problem with the activation zero point set to 128. Its expected result is computed by
//! the reference with that zero point.

use rten_gemm::{GemmExecutor, GemmInputA, GemmInputB, GemmOptions, PackedBMatrix, QuantParams};
use rten_tensor::NdTensorView;
use tract_data::internal::{DatumType, Tensor};
use tract_linalg::WeightType;
use tract_linalg::mmm::{AsInputValue, FusedSpec, MMMInputValue, MatMatMul};
use tract_linalg::multithread::{Executor, multithread_tract_scope};

use crate::{Problem, Shape};

/// What an output buffer holds before a checked run.
const POISON_BYTE: u8 = 0x5a;
const POISON: i32 = i32::from_ne_bytes([POISON_BYTE; 4]);

/// One Rust peer, prepared for one GEMM problem: weights packed, output allocated.
pub trait RustPeer {
    /// The peer's id in reports (`rten-gemm`, `tract-linalg`).
    fn id(&self) -> &'static str;
    /// A human name, with the kernel it chose.
    fn name(&self) -> String;
    /// The crate and version.
    fn library(&self) -> &'static str;
    /// One run, into the peer's own output buffer.
    fn run(&mut self);
    /// Fills the output buffer with a sentinel before the checked run, so that a run
    /// that writes nothing cannot pass.
    fn poison_output(&mut self);
    /// The last run's result (M×N i32, row-major).
    fn output(&self) -> Vec<i32>;
    /// The reference result this peer must reproduce.
    fn expected(&self, problem: &Problem) -> Vec<i32>;
}

/// The Rust peers that can run `problem` at `threads`, prepared (weights packed). GEMM
/// only: neither crate exposes a quantized convolution on its own.
pub fn prepare(problem: &Problem, threads: usize) -> Vec<Box<dyn RustPeer + '_>> {
    let Shape::Gemm { m, k, n } = problem.shape else { return Vec::new() };
    let mut peers: Vec<Box<dyn RustPeer + '_>> = Vec::new();
    peers.push(Box::new(Rten::new(problem, m, k, n, threads)));
    if let Some(tract) = Tract::new(problem, m, k, n, threads) {
        peers.push(Box::new(tract));
    }
    peers
}

/// The weights as a K×N row-major matrix (the suite stores them N×K).
fn weights_kxn(problem: &Problem, k: usize, n: usize) -> Vec<i8> {
    let b = problem.weights();
    let mut out = vec![0i8; k * n];
    for col in 0..n {
        for depth in 0..k {
            out[depth * n + col] = b[col * k + depth];
        }
    }
    out
}

struct Rten<'a> {
    problem: &'a Problem,
    m: usize,
    k: usize,
    executor: GemmExecutor<u8, i8, i32>,
    packed_b: PackedBMatrix<i8>,
    a_zero_points: Vec<u8>,
    b_zero_points: Vec<i8>,
    pool: rayon::ThreadPool,
    out: Vec<i32>,
}

impl<'a> Rten<'a> {
    fn new(problem: &'a Problem, m: usize, k: usize, n: usize, threads: usize) -> Rten<'a> {
        let executor = GemmExecutor::<u8, i8, i32>::default();
        let b = weights_kxn(problem, k, n);
        let packed_b = executor.prepack_b(NdTensorView::from_data([k, n], b.as_slice()));
        let b_zp = problem.weight_zero_point();
        Rten {
            problem,
            m,
            k,
            executor,
            packed_b,
            a_zero_points: vec![problem.activation_zero_point(); m],
            b_zero_points: vec![b_zp; n],
            pool: rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("a rayon pool"),
            out: vec![0; m * n],
        }
    }
}

impl RustPeer for Rten<'_> {
    fn id(&self) -> &'static str {
        "rten-gemm"
    }

    fn name(&self) -> String {
        format!("rten-gemm ({})", self.executor.kernel_name())
    }

    fn library(&self) -> &'static str {
        "rten-gemm 0.27.0"
    }

    fn run(&mut self) {
        let out = &mut self.out;
        let a = NdTensorView::from_data([self.m, self.k], self.problem.activations());
        let opts = GemmOptions {
            a_quant: Some(QuantParams { zero_point: &self.a_zero_points }),
            b_quant: Some(QuantParams { zero_point: &self.b_zero_points }),
            ..GemmOptions::default()
        };
        self.pool.install(|| {
            self.executor
                .gemm(out, GemmInputA::Unpacked(a), GemmInputB::Packed(&self.packed_b), opts)
                .expect("rten-gemm accepts the suite's shapes")
        });
    }

    fn poison_output(&mut self) {
        self.out.fill(POISON);
    }

    fn output(&self) -> Vec<i32> {
        self.out.clone()
    }

    fn expected(&self, problem: &Problem) -> Vec<i32> {
        problem.reference_i32(problem.activation_zero_point())
    }
}

struct Tract {
    m: usize,
    n: usize,
    mmm: Box<dyn MatMatMul>,
    packing: usize,
    a: Box<dyn MMMInputValue>,
    b: Box<dyn MMMInputValue>,
    c: Tensor,
    executor: Executor,
}

impl Tract {
    fn new(problem: &Problem, m: usize, k: usize, n: usize, threads: usize) -> Option<Tract> {
        let mmm = tract_linalg::MmmDispatch::native().preferred_kernel(DatumType::I32, Some(m), Some(k), Some(n))?;
        let i8_type = WeightType::Plain(DatumType::I8);
        let packing = mmm.packings().iter().position(|(a, b)| a.precursor() == i8_type && b.precursor() == i8_type)?;
        let a_i8: Vec<i8> = problem.activations().iter().map(|&x| (x ^ 0x80) as i8).collect();
        let a = Tensor::from_shape(&[m, k], &a_i8).ok()?;
        let b = Tensor::from_shape(&[k, n], &weights_kxn(problem, k, n)).ok()?;
        let (a_format, b_format) = &mmm.packings()[packing];
        let a = a_format.prepare_one(&a, 1, 0).ok()?;
        let b = b_format.prepare_one(&b, 0, 1).ok()?;
        let c = Tensor::zero::<i32>(&[m, n]).ok()?;
        let executor = if threads > 1 { Executor::multithread(threads) } else { Executor::SingleThread };
        Some(Tract { m, n, mmm, packing, a, b, c, executor })
    }
}

impl RustPeer for Tract {
    fn id(&self) -> &'static str {
        "tract-linalg"
    }

    fn name(&self) -> String {
        format!("tract-linalg ({})", self.mmm.name())
    }

    fn library(&self) -> &'static str {
        "tract-linalg 0.23.9"
    }

    fn run(&mut self) {
        // SAFETY: axes 0 and 1 of `self.c` are its m and n axes, and the store wraps
        // `self.c`, an m×n i32 tensor that outlives every use of the store below.
        let store = unsafe { self.mmm.c_view(Some(0), Some(1)).wrap(&self.c.view_mut()) };
        let specs = [
            FusedSpec::AddMatMul {
                a: AsInputValue::Borrowed(&*self.a),
                b: AsInputValue::Borrowed(&*self.b),
                packing: self.packing,
            },
            FusedSpec::Store(store),
        ];
        multithread_tract_scope(self.executor.clone(), || {
            // SAFETY: the packed inputs were prepared by this kernel's own packing
            // `self.packing` for an m×k by k×n product, and the store wraps `self.c`, an
            // m×n i32 tensor that outlives the call; this is the contract of `run`.
            unsafe { self.mmm.run(self.m, self.n, &specs) }
        })
        .expect("tract-linalg runs the suite's shapes");
    }

    fn poison_output(&mut self) {
        self.c.as_bytes_mut().fill(POISON_BYTE);
    }

    fn output(&self) -> Vec<i32> {
        let bytes = self.c.as_bytes().chunks_exact(4);
        bytes.map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes"))).collect()
    }

    fn expected(&self, problem: &Problem) -> Vec<i32> {
        problem.reference_i32(128)
    }
}
