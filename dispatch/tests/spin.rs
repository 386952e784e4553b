//! The caller sets how long helper threads spin after a threaded call
//! (`Options::with_spin_time`, `qgemm::set_spin_time`): a 64×256×256 GEMM every
//! millisecond on 2 threads, for 500 calls, costs the process about its own work in
//! CPU time with a spin time of 0, and a core's worth more while helpers spin through
//! the pauses (a spin time above the cadence). Every result is checked.
//!
//! CPU time is the process's, from `/proc/self/stat` (user + system, in the kernel's
//! 100 Hz ticks: 10 ms resolution against the hundreds of milliseconds compared), so
//! the test runs on Linux only. Its own file: no other test's calls share the process.

#![cfg(target_os = "linux")]

use std::time::{Duration, Instant};

use qgemm::{Activations, Channelwise, OutputMatrix, OutputStage, PackedWeights, Weights, Workspace};

/// The process's CPU time so far (all threads, those that ended included).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (in parentheses, which may hold spaces): state is
    // field 3, utime 14 and stime 15.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

struct Problem {
    a: Vec<u8>,
    packed: PackedWeights,
    expected: Vec<i32>,
}

const M: usize = 64;
const K: usize = 256;
const N: usize = 256;

impl Problem {
    fn new() -> Problem {
        let a: Vec<u8> = (0..M * K).map(|i| (i * 7 % 256) as u8).collect();
        let b: Vec<i8> = (0..K * N).map(|i| (i * 13 % 256) as u8 as i8).collect();
        let zero_point = Channelwise::PerTensor(-3);
        let weights = Weights::kxn(&b, K, N).with_zero_point(zero_point.clone());
        let packed = PackedWeights::new(weights).expect("weights");
        let mut p = Problem { a, packed, expected: Vec::new() };
        p.expected = p.run(&qgemm::Options::new(), &mut Workspace::new());
        p
    }

    fn run(&self, options: &qgemm::Options, workspace: &mut Workspace) -> Vec<i32> {
        let mut c = vec![0i32; M * N];
        let a = Activations::new(&self.a, M, K, 9);
        let out = OutputMatrix::i32(&mut c, M, N);
        qgemm::gemm_in(&a, &self.packed, &OutputStage::default(), out, options, workspace).expect("a valid call");
        c
    }

    /// 500 calls a millisecond apart: the CPU time they cost, and the wall time.
    fn cadence(&self, options: &qgemm::Options) -> (Duration, Duration) {
        let mut workspace = Workspace::new();
        // Helpers of the calls before have run out their spin (at most a second).
        std::thread::sleep(Duration::from_millis(1100));
        let (cpu, wall) = (cpu_time(), Instant::now());
        for _ in 0..500 {
            assert!(self.run(options, &mut workspace) == self.expected, "a wrong result");
            std::thread::sleep(Duration::from_millis(1));
        }
        (cpu_time() - cpu, wall.elapsed())
    }
}

#[test]
fn helpers_spin_as_long_as_the_caller_says() {
    if std::env::var_os("QGEMM_TEST_RUNNER").is_some_and(|r| !r.is_empty()) {
        // Under an emulator the work itself outlasts the millisecond between calls.
        println!("under an emulator (QGEMM_TEST_RUNNER): the cadence cannot be kept; skipped");
        return;
    }
    let p = Problem::new();
    // A busy machine can keep a spinning helper off its core for a whole measurement,
    // so a failed comparison is measured again (at most three times); a setting that
    // is ignored fails every time.
    let mut failures = Vec::new();
    for _ in 0..3 {
        match measure(&p) {
            Ok(()) => return,
            Err(e) => failures.push(e),
        }
    }
    panic!("spin times not honoured in three measurements: {failures:#?}");
}

/// One measurement of every setting: `Err` says which comparison failed.
fn measure(p: &Problem) -> Result<(), String> {
    let two = qgemm::Options::new().with_threads(2);
    let (default_cpu, wall) = p.cadence(&two);
    assert!(wall >= Duration::from_millis(500), "500 pauses of 1 ms took {wall:?}");
    let (long_cpu, _) = p.cadence(&two.with_spin_time(Duration::from_millis(5)));
    let (zero_cpu, _) = p.cadence(&two.with_spin_time(Duration::ZERO));
    // Process-wide, for calls that set no time of their own.
    qgemm::set_spin_time(Some(Duration::ZERO));
    assert_eq!(qgemm::spin_time(), Duration::ZERO);
    let (process_zero_cpu, _) = p.cadence(&two);
    qgemm::set_spin_time(None);
    let (one_thread_cpu, _) = p.cadence(&qgemm::Options::new());
    println!(
        "500 calls of {M}×{K}×{N}, 1 ms apart ({:.2} s), CPU time: 2 threads spinning 5 ms {:.2} s, \
         200 µs (default) {:.2} s, 0 {:.2} s, 0 process-wide {:.2} s; 1 thread {:.2} s",
        wall.as_secs_f64(),
        long_cpu.as_secs_f64(),
        default_cpu.as_secs_f64(),
        zero_cpu.as_secs_f64(),
        process_zero_cpu.as_secs_f64(),
        one_thread_cpu.as_secs_f64(),
    );
    // What threading adds to the work (what one thread costs), whatever the tier's
    // speed and however busy the machine (a busy core slows all of them alike).
    let extra = |cpu: Duration| cpu.saturating_sub(one_thread_cpu);
    // A helper spinning through every pause costs far more than one spinning 200 µs.
    if extra(long_cpu) <= extra(default_cpu) * 2 {
        return Err(format!("spinning 5 ms: {long_cpu:?}, 200 µs: {default_cpu:?}, 1 thread {one_thread_cpu:?}"));
    }
    // Sleeping at once adds under a third of what spinning adds.
    if extra(zero_cpu) * 3 >= extra(long_cpu) {
        return Err(format!("spin 0: {zero_cpu:?} against {long_cpu:?} spinning, 1 thread {one_thread_cpu:?}"));
    }
    if extra(process_zero_cpu) * 3 >= extra(long_cpu) {
        return Err(format!("process-wide 0: {process_zero_cpu:?} against {long_cpu:?} spinning"));
    }
    Ok(())
}
