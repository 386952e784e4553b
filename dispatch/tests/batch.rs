//! Batched GEMM: products of different shapes, weights, stages and output types in one
//! call, on every ISA and several thread counts, each equal to the reference; and a
//! batch with one bad item writes nothing at all.

mod common;

use common::{GemmCase, Rng, dequantize_for, requantize_for, schemes};
use qgemm::reference::OutputData;
use qgemm::{
    Activations, ErrorKind, GemmBatchItem, Options, OutputMatrix, OutputType, PackedWeights, Weights, Workspace,
};

fn cases(rng: &mut Rng) -> Vec<GemmCase> {
    let mut cases = Vec::new();
    for (i, (m, n, k)) in
        [(1, 30, 70), (17, 9, 33), (40, 64, 200), (3, 3, 3), (64, 20, 1000), (0, 5, 4)].into_iter().enumerate()
    {
        let out = [OutputType::U8, OutputType::I8, OutputType::I32, OutputType::F32][i % 4];
        let mut case = GemmCase::random(rng, m, n, k);
        case = match out {
            OutputType::U8 | OutputType::I8 => {
                let all = schemes(rng, n, i % 2 == 0, k);
                let scheme = all[rng.below(all.len())].clone();
                let r = requantize_for(rng, scheme, out);
                case.with_output(out, Some(r))
            }
            _ => case.with_output(out, None),
        };
        if out == OutputType::F32 {
            case.stage.dequantize = Some(dequantize_for(rng, n, true, true));
        }
        case.stage.bias = Some((0..n).map(|_| rng.next_u64() as i32 >> 10).collect());
        cases.push(case);
    }
    cases
}

/// Output buffers for `cases`, filled with a sentinel byte pattern.
enum Buffer {
    U8(Vec<u8>),
    I8(Vec<i8>),
    I32(Vec<i32>),
    F32(Vec<f32>),
}

fn buffer(case: &GemmCase) -> Buffer {
    let len = case.m * case.n;
    match case.out {
        OutputType::U8 => Buffer::U8(vec![0x5a; len]),
        OutputType::I8 => Buffer::I8(vec![0x5a; len]),
        OutputType::I32 => Buffer::I32(vec![0x5a5a_5a5a; len]),
        _ => Buffer::F32(vec![f32::from_bits(0x5a5a_5a5a); len]),
    }
}

fn matrix<'a>(b: &'a mut Buffer, case: &GemmCase) -> OutputMatrix<'a> {
    let (m, n) = (case.m, case.n);
    match b {
        Buffer::U8(v) => OutputMatrix::u8(v, m, n),
        Buffer::I8(v) => OutputMatrix::i8(v, m, n),
        Buffer::I32(v) => OutputMatrix::i32(v, m, n),
        Buffer::F32(v) => OutputMatrix::f32(v, m, n),
    }
}

fn data(b: Buffer) -> OutputData {
    match b {
        Buffer::U8(v) => OutputData::U8(v),
        Buffer::I8(v) => OutputData::I8(v),
        Buffer::I32(v) => OutputData::I32(v),
        Buffer::F32(v) => OutputData::F32(v),
    }
}

fn untouched(b: &Buffer) -> bool {
    match b {
        Buffer::U8(v) => v.iter().all(|&x| x == 0x5a),
        Buffer::I8(v) => v.iter().all(|&x| x == 0x5a),
        Buffer::I32(v) => v.iter().all(|&x| x == 0x5a5a_5a5a),
        Buffer::F32(v) => v.iter().all(|x| x.to_bits() == 0x5a5a_5a5a),
    }
}

#[test]
fn every_item_of_a_batch_equals_the_reference() {
    let mut rng = Rng::new(0xba7c);
    let cases = cases(&mut rng);
    let mut workspace = Workspace::new();
    for &isa in qgemm::available_isas() {
        let packed: Vec<PackedWeights> = cases
            .iter()
            .map(|c| {
                PackedWeights::for_isa(isa, Weights::new(&c.b, c.layout, c.k, c.n).with_zero_point(c.b_zp.clone()))
            })
            .collect::<qgemm::Result<_>>()
            .unwrap();
        for threads in [1, 2, 3, 7] {
            let mut buffers: Vec<Buffer> = cases.iter().map(buffer).collect();
            let items = cases
                .iter()
                .zip(&packed)
                .zip(buffers.iter_mut())
                .map(|((c, b), buf)| {
                    GemmBatchItem::new(Activations::new(&c.a, c.m, c.k, c.a_zp), b, &c.stage, matrix(buf, c))
                })
                .collect();
            qgemm::gemm_batch(items, &Options::new().with_threads(threads), &mut workspace).unwrap();
            for (i, (case, buf)) in cases.iter().zip(buffers).enumerate() {
                assert!(
                    data(buf) == case.expected(),
                    "{isa}, {threads} threads: item {i} ({}x{}x{})",
                    case.m,
                    case.n,
                    case.k
                );
            }
        }
    }
}

#[test]
fn one_bad_item_fails_the_batch_and_writes_nothing() {
    let mut rng = Rng::new(0xbad);
    let cases = cases(&mut rng);
    let packed: Vec<PackedWeights> = cases
        .iter()
        .map(|c| PackedWeights::new(Weights::new(&c.b, c.layout, c.k, c.n).with_zero_point(c.b_zp.clone())).unwrap())
        .collect();
    let mut buffers: Vec<Buffer> = cases.iter().map(buffer).collect();
    let items = cases
        .iter()
        .zip(&packed)
        .zip(buffers.iter_mut())
        .enumerate()
        .map(|(i, ((c, b), buf))| {
            // Item 4's activations are one value short.
            let a = if i == 4 { &c.a[..c.a.len() - 1] } else { &c.a[..] };
            GemmBatchItem::new(Activations::new(a, c.m, c.k, c.a_zp), b, &c.stage, matrix(buf, c))
        })
        .collect();
    let e = qgemm::gemm_batch(items, &Options::new().with_threads(2), &mut Workspace::new()).unwrap_err();
    assert!(e.kind() == ErrorKind::BufferLength && e.to_string().starts_with("batch item 4: "), "{e}");
    assert!(buffers.iter().all(untouched), "an output was written by a failing batch");
    // An empty batch does nothing.
    qgemm::gemm_batch(Vec::new(), &Options::new(), &mut Workspace::new()).unwrap();
}
