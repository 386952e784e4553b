//! `qgemm-bench`: the throughput study. With no arguments it runs the default suite on
//! every ISA this CPU has, checks every result against the reference, and prints a
//! table. It also measures the Rust peers, merges the Python peers' results, writes
//! the report, and exports the suite for the peer script. `--help` lists the options.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use qgemm::Isa;
use qgemm_bench::report::{self, Measurement, Table, Timing};
use qgemm_bench::{
    CONV_SUITE, DataKind, Problem, Shape, WeightBits, default_suite, export, median, parse_shapes, peak, rust_peers,
};

const HELP: &str = "\
qgemm-bench: the qgemm throughput study

Runs each shape on each ISA, times it (median of repeated runs), checks the result
against the scalar reference byte for byte, and prints one row per measurement.

Options:
  --shapes LIST        comma-separated shapes (default: the whole suite):
                         gemm:MxKxN   M x K x N
                         conv:NAME    a convolution of the suite (listed below)
                         conv:NxHxWxC/OC/KHxKW[/sS][/pP][/dD][/gG]
                                      any NHWC convolution: batch x height x width x
                                      channels, output channels, kernel height x width;
                                      options in any order, each at most once:
                                      sS stride, S = one value or AxB (vertical x
                                      horizontal), default 1; pP padding, P = one value
                                      or TxLxBxR (top, left, bottom, right), default 0;
                                      dD dilation, like S; gG groups, dividing C and OC,
                                      default 1. E.g. conv:1x56x56x128/128/3x3/s2/p1.
                                      Its rows are labelled with the canonical spec.
  --isa LIST           comma-separated ISAs (default: every ISA available here)
  --threads LIST       comma-separated thread counts (default 1)
  --data KIND          full (default): full-range data; 7bit: activations in 0..=127
  --weights LIST       comma-separated weight types (default i8): i8; i4: int4 in
                       [-8, 7], zero point 0; u4: uint4 in [0, 15], zero point 8;
                       4-bit weights are kept two per byte. Rows of 4-bit weights are
                       labelled `qgemm ISA i4` / `u4`, and a table puts them beside
                       int8. The Rust peers run i8 only.
  --min-time S         seconds of timed runs per row, at least 3 runs (default 0.5)
  --json               one JSON object per line per measurement instead of the table
  --rust-peers         also time rten-gemm and tract-linalg on the GEMM shapes,
                       each checked against the reference
  --cutover            instead of the study: for each ISA whose tier runs small
                       products on a second kernel (amx-int8), both kernels on
                       the same weights at M = 1..128, one thread: where the
                       tier's own kernel starts to win (the cut-over in M)
  --peer-results FILE  merge the JSON lines of benches/peers/peers.py (repeatable)
  --report DIR         write DIR/report.md, one SVG chart per suite and thread
                       count, and DIR/results.jsonl
  --export DIR         write the shapes' data and reference results for the peer
                       script into DIR, then exit without timing anything
  --help               this text

Exit status: 0 when every qgemm row is exact, 1 when any is not, 2 on bad arguments
or I/O errors. Peers' wrong outputs are reported, not failed on.

The suite's convolutions (NAME: spec):";

/// The help text: [`HELP`] and the suite's named convolutions.
fn help() -> String {
    let width = CONV_SUITE.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    let names: Vec<String> = CONV_SUITE.iter().map(|(name, spec)| format!("  {name:<width$}  {spec}")).collect();
    format!("{HELP}\n{}", names.join("\n"))
}

struct Args {
    shapes: Vec<Shape>,
    isas: Vec<Isa>,
    threads: Vec<usize>,
    data: DataKind,
    weights: Vec<WeightBits>,
    min_time: Duration,
    json: bool,
    rust_peers: bool,
    cutover: bool,
    peer_results: Vec<PathBuf>,
    report: Option<PathBuf>,
    export: Option<PathBuf>,
}

fn parse_isas(list: &str) -> Result<Vec<Isa>, String> {
    list.split(',')
        .map(|name| {
            let isa: Isa = name.parse().map_err(|e: qgemm::Error| e.to_string())?;
            if qgemm::available_isas().contains(&isa) {
                Ok(isa)
            } else {
                let avail: Vec<&str> = qgemm::available_isas().iter().map(|i| i.name()).collect();
                Err(format!("--isa {isa}: not available here (available: {})", avail.join(", ")))
            }
        })
        .collect()
}

fn parse_threads(list: &str) -> Result<Vec<usize>, String> {
    list.split(',')
        .map(|t| match t.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("--threads {list}: expected positive integers")),
        })
        .collect()
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        shapes: default_suite(),
        isas: qgemm::available_isas().to_vec(),
        threads: vec![1],
        data: DataKind::Full,
        weights: vec![WeightBits::I8],
        min_time: Duration::from_millis(500),
        json: false,
        rust_peers: false,
        cutover: false,
        peer_results: Vec::new(),
        report: None,
        export: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--help" | "-h" => return Ok(None),
            "--shapes" => args.shapes = parse_shapes(&value()?)?,
            "--isa" => args.isas = parse_isas(&value()?)?,
            "--threads" => args.threads = parse_threads(&value()?)?,
            "--data" => args.data = DataKind::parse(&value()?)?,
            "--weights" => args.weights = WeightBits::parse_list(&value()?)?,
            "--min-time" => {
                let s: f64 = value()?.parse().map_err(|_| "--min-time needs seconds".to_string())?;
                if !(s.is_finite() && s >= 0.0) {
                    return Err("--min-time needs non-negative seconds".into());
                }
                args.min_time = Duration::from_secs_f64(s);
            }
            "--json" => args.json = true,
            "--rust-peers" => args.rust_peers = true,
            "--cutover" => args.cutover = true,
            "--peer-results" => args.peer_results.push(value()?.into()),
            "--report" => args.report = Some(value()?.into()),
            "--export" => args.export = Some(value()?.into()),
            other => return Err(format!("unknown option {other:?}; see --help")),
        }
    }
    if args.shapes.is_empty() || args.isas.is_empty() {
        return Err("nothing to run: no shapes or no ISAs".into());
    }
    Ok(Some(args))
}

/// Times `run` until `min_time` has passed and at least 3 runs were made (after one
/// warm-up run), at most 1000 runs; returns the median in seconds.
fn time_runs(min_time: Duration, mut run: impl FnMut()) -> f64 {
    run();
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 3 || (start.elapsed() < min_time && times.len() < 1000) {
        let t = Instant::now();
        run();
        times.push(t.elapsed().as_secs_f64());
    }
    median(&mut times)
}

/// Shows what is running on the terminal's status line (nothing when stderr is not a
/// terminal, so that logs stay clean).
fn progress(line: &str) {
    let mut err = std::io::stderr();
    if err.is_terminal() {
        let _ = write!(err, "\r\x1b[K{line}");
        let _ = err.flush();
    }
}

/// The seed of a shape's data: a hash (FNV-1a) of its label, so that the export and
/// the timed runs, and runs of any subset of the suite, see the same data.
fn seed(shape: &Shape) -> u64 {
    let label = format!("{}:{}", shape.op(), shape.label());
    label.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// The width of the tables' shape column: `op label` of the longest shape, at least 24.
fn shape_width(shapes: &[Shape]) -> usize {
    shapes.iter().map(|s| s.op().len() + 1 + s.label().len()).fold(24, usize::max)
}

/// Compares an output with the reference: the count of elements that differ, and the
/// largest difference.
fn compare<T: Copy + Into<i64>>(got: &[T], expected: &[T]) -> (u64, i64) {
    assert_eq!(got.len(), expected.len(), "output lengths");
    let diffs = got.iter().zip(expected).map(|(&a, &b)| (a.into() - b.into()).abs()).filter(|&d| d != 0);
    diffs.fold((0, 0), |(wrong, max), d| (wrong + 1, max.max(d)))
}

/// Runs one shape at one thread count on qgemm (each ISA) and, when asked, on the Rust
/// peers; prints a line per measurement as it goes.
struct Runner<'a> {
    args: &'a Args,
    peaks: HashMap<Isa, peak::Peak>,
    done: usize,
    total: usize,
}

impl Runner<'_> {
    fn step(&mut self, what: &str) -> String {
        self.done += 1;
        format!("[{}/{}] {what}", self.done, self.total)
    }

    fn qgemm(&mut self, problem: &Problem, threads: usize, expected: &mut Option<Vec<u8>>) -> Vec<Measurement> {
        let mut rows = Vec::new();
        for &isa in &self.args.isas {
            let shape = &problem.shape;
            let bits = problem.bits;
            let id = match bits {
                WeightBits::I8 => format!("qgemm {isa}"),
                other => format!("qgemm {isa} {}", other.name()),
            };
            let what = self.step(&format!("{} {} on {id}, {threads} thread(s)", shape.op(), shape.label()));
            progress(&format!("{what}: timing..."));
            let packed = problem.pack(isa).expect("the suite's weights pack on every available ISA");
            let mut out = vec![0u8; problem.output_len()];
            // One workspace across the runs, as an engine would keep it.
            let mut workspace = qgemm::Workspace::new();
            let mut run = |out: &mut [u8]| {
                problem.run(&packed, threads, out, &mut workspace).expect("the suite's arguments are valid")
            };
            let secs = time_runs(self.args.min_time, || run(&mut out));
            // A poisoned buffer for the checked run, so that a run that writes nothing
            // cannot pass.
            out.fill(0xa5);
            run(&mut out);
            let scratch_bytes = Some(workspace.max_thread_heap_size() as u64);
            let expected = expected.get_or_insert_with(|| {
                progress(&format!("{what}: computing the reference..."));
                problem.reference()
            });
            let (wrong, max_abs_diff) = compare(&out, expected);
            let gops = shape.ops() as f64 / secs / 1e9;
            // 7-bit activations take the kernel's fast path where it has one.
            let info = Some(packed.kernel_info());
            let kernel = match (info, problem.data) {
                (Some(k), _) if problem.conv_path(&packed) == Some(qgemm::ConvPath::Depthwise) => k.depthwise,
                (Some(k), DataKind::SevenBit) => k.fast_path.unwrap_or(k.name),
                (Some(k), DataKind::Full) => k.name,
                (None, _) => "?",
            };
            progress("");
            let peak = 100.0 * gops / (self.peaks[&isa].gops * threads as f64);
            let m = Measurement {
                suite: shape.op().into(),
                shape: shape.label(),
                threads,
                data: problem.data.name().into(),
                weights: bits.name().into(),
                name: format!("{id} ({kernel})"),
                id,
                library: format!("qgemm {}", env!("CARGO_PKG_VERSION")),
                is_qgemm: true,
                result: Ok(Timing {
                    ms: secs * 1e3,
                    gops,
                    wrong,
                    total: out.len() as u64,
                    max_abs_diff,
                    scratch_bytes,
                    checked: true,
                }),
            };
            self.line(&m, kernel, Some(peak));
            rows.push(m);
        }
        rows
    }

    fn rust_peers(&mut self, problem: &Problem, threads: usize) -> Vec<Measurement> {
        let mut rows = Vec::new();
        for mut peer in rust_peers::prepare(problem, threads) {
            let shape = &problem.shape;
            let what = self.step(&format!("{} {} on {}, {threads} thread(s)", shape.op(), shape.label(), peer.id()));
            progress(&format!("{what}: timing..."));
            let secs = time_runs(self.args.min_time, || peer.run());
            peer.poison_output();
            peer.run();
            progress(&format!("{what}: computing the reference..."));
            let expected = peer.expected(problem);
            let out = peer.output();
            let (wrong, max_abs_diff) = compare(&out, &expected);
            let gops = shape.ops() as f64 / secs / 1e9;
            progress("");
            let m = Measurement {
                suite: shape.op().into(),
                shape: shape.label(),
                threads,
                data: problem.data.name().into(),
                weights: problem.bits.name().into(),
                id: peer.id().into(),
                name: peer.name(),
                library: peer.library().into(),
                is_qgemm: false,
                result: Ok(Timing {
                    ms: secs * 1e3,
                    gops,
                    wrong,
                    total: out.len() as u64,
                    max_abs_diff,
                    scratch_bytes: None,
                    checked: true,
                }),
            };
            self.line(&m, &m.name, None);
            rows.push(m);
        }
        rows
    }

    /// Prints one measurement as a row of the running table.
    fn line(&self, m: &Measurement, kernel: &str, peak: Option<f64>) {
        let Ok(t) = &m.result else { return };
        if self.args.json {
            return; // the measurements are printed as JSON at the end
        }
        let peak = peak.map_or("-".to_string(), |p| format!("{p:.1}%"));
        let exact = if t.wrong == 0 { "yes".to_string() } else { format!("NO ({})", t.wrong) };
        let scratch = t.scratch_bytes.map_or("-".to_string(), |b| format!("{:.1}", b as f64 / 1024.0));
        println!(
            "{:<w$} {:<18} {:<40} {:>7} {:>11.3} {:>9.2} {:>7} {:>6} {:>12}",
            format!("{} {}", m.suite, m.shape),
            m.id,
            kernel,
            m.threads,
            t.ms,
            t.gops,
            peak,
            exact,
            scratch,
            w = shape_width(&self.args.shapes)
        );
    }
}

/// Each implementation's speed-up over its own 1-thread figure, per shape, from rows
/// of the same run.
fn print_scaling(rows: &[Measurement], w: usize) {
    let gops = |m: &Measurement| m.result.as_ref().ok().map(|t| t.gops);
    println!("\nscaling: GOPS at t threads ÷ GOPS at 1 thread, same run");
    println!("{:<w$} {:<18} {:>7} {:>9} {:>9}", "shape", "implementation", "threads", "GOPS", "speed-up");
    for m in rows.iter().filter(|m| m.threads > 1) {
        let one = rows.iter().find(|o| o.threads == 1 && o.suite == m.suite && o.shape == m.shape && o.id == m.id);
        if let (Some(g), Some(g1)) = (gops(m), one.and_then(gops)) {
            println!(
                "{:<w$} {:<18} {:>7} {:>9.2} {:>8.2}×",
                format!("{} {}", m.suite, m.shape),
                m.id,
                m.threads,
                g,
                g / g1
            );
        }
    }
}

fn read_peer_results(paths: &[PathBuf]) -> Result<Vec<Measurement>, String> {
    let mut rows = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            rows.push(Measurement::from_peer_json(line).map_err(|e| format!("{}: {e}", path.display()))?);
        }
    }
    Ok(rows)
}

fn export_suite(args: &Args, dir: &std::path::Path) -> ExitCode {
    let problems: Vec<Problem> = args
        .shapes
        .iter()
        .flat_map(|s| args.weights.iter().map(|&w| Problem::with_weights(s.clone(), args.data, w, seed(s))))
        .collect();
    let total = problems.len();
    let result = export::export(dir, &problems, |i, p| {
        progress(&format!(
            "[{}/{total}] exporting {} {} with its reference results",
            i + 1,
            p.shape.op(),
            p.shape.label()
        ))
    });
    progress("");
    match result {
        Ok(()) => {
            println!("exported {total} problems ({} data) to {}", args.data.name(), dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("qgemm-bench: --export {}: {e}", dir.display());
            ExitCode::from(2)
        }
    }
}

/// The CPU's int8 multiply features as the kernel reports them (`/proc/cpuinfo`),
/// which decide what peers run: MLAS and FBGEMM use `vpmaddubsw`, which saturates, on
/// AVX2 without VNNI, and VNNI or AMX instructions, which do not, where those exist.
fn int8_features(cpuinfo: &str) -> String {
    const INTERESTING: [&str; 8] =
        ["avx2", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "asimddp", "i8mm"];
    let flags = cpuinfo.lines().find(|l| l.starts_with("flags") || l.starts_with("Features"));
    let present: Vec<&str> = flags
        .and_then(|l| l.split(':').nth(1))
        .map(|f| f.split_whitespace().filter(|f| INTERESTING.contains(f)).collect())
        .unwrap_or_default();
    if present.is_empty() { "unknown".into() } else { present.join(", ") }
}

/// The report's opening: what ran where, and how to read it.
fn report_header(args: &Args) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown CPU", str::trim);
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let features = int8_features(&cpuinfo);
    let command: Vec<String> = std::env::args().collect();
    let isas: Vec<&str> = args.isas.iter().map(|i| i.name()).collect();
    format!(
        "# qgemm throughput report\n\n\
         - Machine: {cpu}, {cpus} logical CPUs; int8 features: {features}; qgemm ISAs measured: {}.\n\
         - Command: `{}`\n\
         - Problems: u8 activations × i8 weights, per-tensor Float requantization to u8 \
         (qgemm also adds an i32 bias; peers without an i32 bias input run the same problem without it). \
         Each figure is the median of repeated runs ({:.2} s or at least 3 runs), in GOPS = 2·MACs per second.\n\
         - Every output of every implementation is compared with the qgemm reference's result for the same \
         problem and data; \"wrong\" counts the outputs that differ. qgemm must have none.\n",
        isas.join(", "),
        command.join(" "),
        args.min_time.as_secs_f64(),
    )
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{}", help());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("qgemm-bench: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(dir) = &args.export {
        return export_suite(&args, dir);
    }
    if args.cutover {
        let exact = qgemm_bench::cutover::run(&args.isas, args.min_time, |t, run| time_runs(t, run));
        return if exact { ExitCode::SUCCESS } else { ExitCode::from(1) };
    }
    let peer_rows = match read_peer_results(&args.peer_results) {
        Ok(rows) => rows,
        Err(e) => {
            eprintln!("qgemm-bench: --peer-results {e}");
            return ExitCode::from(2);
        }
    };

    let peaks: HashMap<Isa, peak::Peak> = args.isas.iter().map(|&isa| (isa, peak::measure(isa, args.data))).collect();
    if !args.json {
        for (isa, p) in &peaks {
            println!("peak for {isa}: {:.1} GOPS per thread ({}, measured now)", p.gops, p.probe);
        }
        // The machine's own scaling: the same probe on every thread at once.
        if let Some(&isa) = args.isas.first() {
            for &threads in args.threads.iter().filter(|&&t| t > 1) {
                let one = peak::measure(isa, args.data).gops;
                let all = peak::measure_threads(isa, args.data, threads);
                println!(
                    "peak for {isa} on {threads} threads at once: {all:.1} GOPS, {:.2}× one thread ({one:.1}, measured just before)",
                    all / one
                );
            }
        }
        let bandwidth = peak::read_bandwidth(16 << 20);
        println!(
            "memory: {bandwidth:.1} GB/s reading 16 MiB on one thread, so a GEMV whose weights are that large \
             reaches at most {:.0} GOPS per thread",
            2.0 * bandwidth
        );
        println!(
            "data: {}, u8 output, Float requantization, bias; every result checked against the reference\n",
            args.data.name()
        );
        println!(
            "{:<w$} {:<18} {:<40} {:>7} {:>11} {:>9} {:>7} {:>6} {:>12}",
            "shape",
            "implementation",
            "kernel",
            "threads",
            "median ms",
            "GOPS",
            "% peak",
            "exact",
            "scratch KiB",
            w = shape_width(&args.shapes)
        );
    }

    let gemm_shapes = args.shapes.iter().filter(|s| matches!(s, Shape::Gemm { .. })).count();
    let rust_peer_rows = if args.rust_peers && args.weights.contains(&WeightBits::I8) { 2 * gemm_shapes } else { 0 };
    let per_thread = args.shapes.len() * args.isas.len() * args.weights.len() + rust_peer_rows;
    let mut runner = Runner { args: &args, peaks, done: 0, total: per_thread * args.threads.len() };
    let mut rows = Vec::new();
    for shape in &args.shapes {
        for &bits in &args.weights {
            let problem = Problem::with_weights(shape.clone(), args.data, bits, seed(shape));
            let mut expected = None;
            for &threads in &args.threads {
                rows.extend(runner.qgemm(&problem, threads, &mut expected));
                if args.rust_peers && bits == WeightBits::I8 {
                    rows.extend(runner.rust_peers(&problem, threads));
                }
            }
        }
    }
    let qgemm_exact = rows.iter().all(|m| !m.is_qgemm || m.result.as_ref().is_ok_and(|t| t.wrong == 0));
    if peer_rows.iter().any(|m| m.data != args.data.name()) {
        eprintln!(
            "qgemm-bench: warning: some --peer-results were measured on other data than --data {}",
            args.data.name()
        );
    }
    rows.extend(peer_rows);
    if !args.json && args.threads.len() > 1 {
        print_scaling(&rows, shape_width(&args.shapes));
    }

    if args.json {
        for m in &rows {
            println!("{}", m.json());
        }
    } else {
        if rows.iter().any(|m| !m.is_qgemm) {
            for table in Table::split(&rows) {
                println!("\n{}", table.text());
            }
        }
        if let Some(comparison) = report::weights_comparison(&rows, false) {
            println!("{comparison}");
        }
    }
    if let Some(dir) = &args.report {
        match report::write(dir, &report_header(&args), &rows) {
            Ok(files) => eprintln!("report: {} in {}", files.join(", "), dir.display()),
            Err(e) => {
                eprintln!("qgemm-bench: --report: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if qgemm_exact { ExitCode::SUCCESS } else { ExitCode::from(1) }
}
