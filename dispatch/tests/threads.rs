//! Results do not depend on threads or partitions: the same GEMMs and convolutions
//! (every conv path, every output type and scheme, tails, strided outputs, extreme
//! data) at 1, 2, 3 and 7 threads, and through the task API with uneven grids (cuts
//! inside kernel tiles and channel blocks, empty tasks, more tasks than flags fit
//! inline) run from several threads in scrambled order, each byte for byte against
//! the reference, with the gaps between output rows untouched. Then the task API's
//! misuse: a task run twice, an index past the end, a grid that does not cover the
//! output.

mod common;

use common::{ConvCase, GemmCase, Rng, Want, first_mismatch, requantize_for, run_into, schemes};
use qgemm::reference::OutputData;
use qgemm::{
    Activations, Conv2dParams, Conv2dTasks, ConvInput, ErrorKind, GemmTasks, Isa, OutputMatrix, OutputType,
    PackedWeights, Partition, Weights, Workspace,
};

const THREADS: [usize; 4] = [1, 2, 3, 7];

/// GEMMs large enough that [`Partition::Auto`] cuts them at 7 threads, each with
/// i32 + bias, u8 and i8 outputs under different schemes.
fn gemm_cases() -> Vec<(String, GemmCase)> {
    let mut rng = Rng::new(0x7415_0001);
    let mut cases = Vec::new();
    let shapes = [
        ("tails in M, N and K", 150, 100, 70),
        ("few rows, many columns", 9, 300, 200),
        ("K across cache blocks", 61, 77, 1100),
    ];
    for (label, m, n, k) in shapes {
        for (o, out) in [OutputType::I32, OutputType::U8, OutputType::I8].into_iter().enumerate() {
            let mut case = GemmCase::random(&mut rng, m, n, k);
            case.stage.bias = Some((0..n).map(|_| rng.next_u64() as i32 >> 12).collect());
            if out != OutputType::I32 {
                let scheme = schemes(&mut rng, n, o == 1, k)[rng.below(4)].clone();
                let requantize = requantize_for(&mut rng, scheme, out);
                case = case.with_output(out, Some(requantize));
            }
            case.out_stride = n + 3;
            cases.push((format!("{label} ({m}×{n}×{k}, {out:?})"), case));
        }
    }
    // A = 255 against B = −128 and 127 in pairs: the sums the saturating peers get wrong.
    let mut extreme = GemmCase::random(&mut rng, 40, 64, 512);
    extreme.a.fill(255);
    extreme.b.iter_mut().enumerate().for_each(|(i, b)| *b = if (i / 2) % 2 == 0 { -128 } else { 127 });
    extreme.a_zp = 0;
    extreme.b_zp = qgemm::Channelwise::PerTensor(0);
    cases.push(("extreme data (40×64×512, i32)".into(), extreme));
    cases
}

fn packed(case: &GemmCase, isa: Isa) -> PackedWeights {
    let weights = Weights::new(&case.b, case.layout, case.k, case.n).with_zero_point(case.b_zp.clone());
    PackedWeights::for_isa(isa, weights).expect("valid weights")
}

/// Runs every task of `tasks` (0..count) on three OS threads, in a scrambled order,
/// each thread with its own workspace.
fn run_scrambled(count: usize, run: impl Fn(usize, &mut Workspace) -> qgemm::Result<()> + Sync) {
    // A permutation: 0..count by a step coprime with it, from the middle.
    let step = (1..).map(|s| 2 * s + 1).find(|s| gcd(*s, count.max(1)) == 1).unwrap();
    let order: Vec<usize> = (0..count).map(|i| (count / 2 + i * step) % count).collect();
    std::thread::scope(|s| {
        for t in 0..3 {
            let (order, run) = (&order, &run);
            s.spawn(move || {
                let mut workspace = Workspace::new();
                for &i in order.iter().skip(t).step_by(3) {
                    run(i, &mut workspace).expect("each task once");
                }
            });
        }
    });
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Uneven grids over `len`: cuts one element in (inside the first tile), in the
/// middle and one before the end; and a cut repeated (an empty task).
fn uneven_cuts(len: usize) -> [Vec<usize>; 2] {
    let mut a = vec![0, 1.min(len), len / 2 + 1, len.saturating_sub(1), len];
    a.sort_unstable();
    a.dedup();
    let b = vec![0, len / 3, len / 3, len];
    [a, b]
}

fn assert_same(got: &OutputData, expected: &OutputData, cols: usize, what: &str) {
    assert!(got == expected, "{what} differs from the reference: {}", first_mismatch(got, expected, cols));
}

#[test]
fn gemm_is_identical_at_1_2_3_and_7_threads() {
    for (label, case) in gemm_cases() {
        let expected = case.expected();
        for &isa in qgemm::available_isas() {
            // The 7-thread call really is cut (else this test would prove nothing).
            let b = packed(&case, isa);
            let a = Activations::new(&case.a, case.m, case.k, case.a_zp).with_row_stride(case.a_stride);
            let mut scratch = vec![0i32; case.m * case.n];
            let auto = Partition::auto(7);
            let tasks = GemmTasks::new(&a, &b, &case.stage, OutputMatrix::i32(&mut scratch, case.m, case.n), &auto);
            if case.out == OutputType::I32 {
                assert!(tasks.unwrap().len() > 1, "{label}: one task at 7 threads");
            }
            for threads in THREADS {
                let (got, gaps_ok) = case.run(isa, threads);
                assert_same(&got, &expected, case.n, &format!("{label} on {isa} at {threads} threads"));
                assert!(gaps_ok, "{label} on {isa} at {threads} threads: a gap between rows was written");
            }
        }
    }
}

#[test]
fn gemm_tasks_on_uneven_grids_match() {
    for (label, case) in gemm_cases() {
        let expected = case.expected();
        let (m, n) = (case.m, case.n);
        let mut grids: Vec<(Vec<usize>, Vec<usize>)> = Vec::new();
        for rows in uneven_cuts(m) {
            for cols in uneven_cuts(n) {
                grids.push((rows.clone(), cols));
            }
        }
        // One row per task: hundreds of tasks.
        grids.push(((0..=m).collect(), vec![0, n / 2, n]));
        for &isa in qgemm::available_isas() {
            let b = packed(&case, isa);
            let a = Activations::new(&case.a, m, case.k, case.a_zp).with_row_stride(case.a_stride);
            for (rows, cols) in &grids {
                let partition = Partition::grid(rows.clone(), cols.clone());
                let (got, gaps_ok) = run_into(case.out, m, n, case.out_stride, |out| {
                    let tasks = GemmTasks::new(&a, &b, &case.stage, out, &partition)?;
                    run_scrambled(tasks.len(), |i, ws| tasks.run(i, ws));
                    Ok(())
                });
                let what = format!("{label} on {isa}, rows {rows:?} cols {cols:?}");
                assert_same(&got, &expected, n, &what);
                assert!(gaps_ok, "{what}: a gap between rows was written");
            }
        }
    }
}

fn conv_cases() -> Vec<(&'static str, Want, Conv2dParams)> {
    let p = Conv2dParams::new;
    vec![
        ("1x1", Want::PW, p([1, 14, 14, 32], 48, [1, 1])),
        ("3x3 pad 1", Want::IN, p([1, 12, 11, 16], 40, [3, 3]).with_padding(1, 1, 1, 1)),
        ("1x1 stride 2, batch 2", Want::IN, p([2, 15, 15, 64], 48, [1, 1]).with_stride(2, 2)),
        ("3x3 groups 4", Want::IN, p([1, 12, 12, 32], 40, [3, 3]).with_padding(1, 1, 1, 1).with_groups(4)),
        ("7x7 s2 p3, C=3", Want::IN, p([1, 19, 18, 3], 20, [7, 7]).with_stride(2, 2).with_padding(3, 3, 3, 3)),
        ("3x3 groups 3 of 6", Want::IM, p([1, 12, 12, 18], 24, [3, 3]).with_padding(1, 1, 1, 1).with_groups(3)),
        ("dw 3x3", Want::DW, p([1, 24, 23, 44], 44, [3, 3]).with_padding(1, 1, 1, 1).with_groups(44)),
        (
            "dw 5x5 s2, multiplier 2",
            Want::DW,
            p([2, 21, 20, 20], 40, [5, 5]).with_stride(2, 2).with_padding(2, 2, 2, 2).with_groups(20),
        ),
    ]
}

/// The case with a random output type and stage, and a strided output.
fn conv_case(rng: &mut Rng, params: Conv2dParams, variant: usize) -> ConvCase {
    let mut case = ConvCase::random(rng, params);
    if variant == 0 {
        // Symmetric weights, which some kernels read differently (depthwise quads).
        case.weight_zp = qgemm::Channelwise::PerTensor(0);
    }
    let oc = params.out_channels;
    case.stage.bias = Some((0..oc).map(|_| rng.next_u64() as i32 >> 14).collect());
    let out = [OutputType::I32, OutputType::U8, OutputType::I8][variant % 3];
    if out != OutputType::I32 {
        let k = params.kernel_height * params.kernel_width * params.in_channels / params.groups;
        let scheme = schemes(rng, oc, variant.is_multiple_of(2), k)[variant % 4].clone();
        case.stage.requantize = Some(requantize_for(rng, scheme, out));
    }
    case.out = out;
    case.out_stride = oc + 5;
    case
}

#[test]
fn conv_is_identical_at_1_2_3_and_7_threads() {
    let mut rng = Rng::new(0x7415_0002);
    for (label, path, params) in conv_cases() {
        for variant in 0..3 {
            let case = conv_case(&mut rng, params, variant);
            let expected = case.expected();
            for &isa in qgemm::available_isas() {
                let packed = case.packed(isa);
                assert_eq!(packed.path(&params).unwrap(), path.on(&packed), "{label}");
                let rows = params.batch * params.out_height().unwrap() * params.out_width().unwrap();
                let mut scratch = vec![0i32; rows * params.out_channels];
                let input = ConvInput::new(&case.input, case.input_zp);
                let out = OutputMatrix::i32(&mut scratch, rows, params.out_channels);
                let stage = qgemm::OutputStage::default();
                let auto = Partition::auto(7);
                let tasks = Conv2dTasks::new(&input, &packed, &params, &stage, out, &auto).unwrap();
                assert!(tasks.len() > 1, "{label}: one task at 7 threads");
                let mut workspace = Workspace::new();
                for threads in THREADS {
                    let (got, gaps_ok) = case.run_in(isa, threads, &mut workspace);
                    let what = format!("{label} ({:?}) on {isa} at {threads} threads", case.out);
                    assert_same(&got, &expected, params.out_channels, &what);
                    assert!(gaps_ok, "{what}: a gap between rows was written");
                }
            }
        }
    }
}

#[test]
fn conv_tasks_on_uneven_grids_match() {
    let mut rng = Rng::new(0x7415_0003);
    for (label, _, params) in conv_cases() {
        let variant = rng.below(3);
        let case = conv_case(&mut rng, params, variant);
        let expected = case.expected();
        let (oc, ow) = (params.out_channels, params.out_width().unwrap());
        let rows = params.batch * params.out_height().unwrap() * ow;
        // Pixel cuts inside output rows and at their ends; channel cuts inside groups
        // and inside blocks of depthwise channels.
        let pixel_cuts = [vec![0, 1, ow + 3, 2 * ow, rows / 2, rows], vec![0, rows / 3, rows / 3, rows]];
        let channel_cuts = [vec![0, 5, oc / 2 + 1, oc], vec![0, oc], vec![0, 1, 2, 3, oc - 1, oc]];
        for &isa in qgemm::available_isas() {
            let packed = case.packed(isa);
            let input = ConvInput::new(&case.input, case.input_zp);
            for pixels in &pixel_cuts {
                for channels in &channel_cuts {
                    let partition = Partition::grid(pixels.clone(), channels.clone());
                    let (got, gaps_ok) = run_into(case.out, rows, oc, case.out_stride, |out| {
                        let tasks = Conv2dTasks::new(&input, &packed, &params, &case.stage, out, &partition)?;
                        run_scrambled(tasks.len(), |i, ws| tasks.run(i, ws));
                        Ok(())
                    });
                    let what = format!("{label} ({:?}) on {isa}, pixels {pixels:?} channels {channels:?}", case.out);
                    assert_same(&got, &expected, oc, &what);
                    assert!(gaps_ok, "{what}: a gap between rows was written");
                }
            }
        }
    }
}

#[test]
fn task_misuse_is_an_error_that_writes_nothing() {
    let mut rng = Rng::new(0x7415_0004);
    let case = GemmCase::random(&mut rng, 20, 30, 40);
    let b = packed(&case, qgemm::selected_isa().unwrap());
    let a = Activations::new(&case.a, 20, 40, case.a_zp);
    let stage = qgemm::OutputStage::default();
    let mut out = vec![7i32; 20 * 30];

    let partition = Partition::grid([0, 10, 20], [0, 30]);
    let tasks = GemmTasks::new(&a, &b, &stage, OutputMatrix::i32(&mut out, 20, 30), &partition).unwrap();
    assert_eq!(tasks.len(), 2);
    let mut workspace = Workspace::new();
    let err = tasks.run(2, &mut workspace).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Task, "{err}");
    tasks.run(1, &mut workspace).unwrap();
    let err = tasks.run(1, &mut workspace).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Task, "{err}");
    assert!(err.to_string().contains("already ran"), "{err}");
    drop(tasks);
    // Task 1 wrote rows 10..20; task 0 never ran, and nothing wrote rows 0..10.
    assert!(out[..300].iter().all(|&v| v == 7));
    assert!(out[300..].iter().any(|&v| v != 7));

    let bad = [
        (Partition::grid([0, 10], [0, 30]), ErrorKind::Partition),
        (Partition::grid([0, 20], [0, 29]), ErrorKind::Partition),
        (Partition::grid([0, 12, 8, 20], [0, 30]), ErrorKind::Partition),
        (Partition::grid([5, 20], [0, 30]), ErrorKind::Partition),
        (Partition::grid([20], [0, 30]), ErrorKind::Partition),
        (Partition::auto(0), ErrorKind::Threads),
    ];
    let mut out = vec![7i32; 20 * 30];
    for (partition, kind) in bad {
        let err = GemmTasks::new(&a, &b, &stage, OutputMatrix::i32(&mut out, 20, 30), &partition).unwrap_err();
        assert_eq!(err.kind(), kind, "{partition:?}: {err}");
    }
    assert!(out.iter().all(|&v| v == 7));
}
