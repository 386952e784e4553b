//! `qgemm-bench`: the throughput study. With no arguments it runs the default suite on
//! every ISA this CPU has, checks every result against the reference, and prints a
//! table. `--help` lists the options.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use qgemm::Isa;
use qgemm_bench::{DataKind, Problem, Shape, default_suite, median, parse_shapes, peak};

const HELP: &str = "\
qgemm-bench: the qgemm throughput study

Runs each shape on each ISA, times it (median of repeated runs), checks the result
against the scalar reference byte for byte, and prints one row per measurement.

Options:
  --shapes LIST   comma-separated shapes: gemm:MxKxN (M x K x N) or conv:NAME
                  (conv1, r50_3x3, r50_1x1, r50_late3x3, mbv2_1x1, mbv2_dw);
                  default: the whole suite
  --isa LIST      comma-separated ISAs (default: every ISA available here)
  --threads N     threads per run (default 1)
  --data KIND     full (default): full-range data; 7bit: activations in 0..=127
  --min-time S    seconds of timed runs per row, at least 3 runs (default 0.5)
  --json          one JSON object per line per measurement instead of the table
  --help          this text

Exit status: 0 when every row is exact, 1 when any is not, 2 on bad arguments.";

struct Args {
    shapes: Vec<Shape>,
    isas: Vec<Isa>,
    threads: usize,
    data: DataKind,
    min_time: Duration,
    json: bool,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        shapes: default_suite(),
        isas: qgemm::available_isas().to_vec(),
        threads: 1,
        data: DataKind::Full,
        min_time: Duration::from_millis(500),
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--help" | "-h" => return Ok(None),
            "--shapes" => args.shapes = parse_shapes(&value()?)?,
            "--isa" => {
                args.isas = value()?
                    .split(',')
                    .map(|name| {
                        let isa: Isa = name.parse().map_err(|e: qgemm::Error| e.to_string())?;
                        if qgemm::available_isas().contains(&isa) {
                            Ok(isa)
                        } else {
                            let avail: Vec<&str> = qgemm::available_isas().iter().map(|i| i.name()).collect();
                            Err(format!("--isa {isa}: not available here (available: {})", avail.join(", ")))
                        }
                    })
                    .collect::<Result<_, String>>()?;
            }
            "--threads" => {
                args.threads = value()?.parse().map_err(|_| "--threads needs a positive integer".to_string())?;
                if args.threads == 0 {
                    return Err("--threads needs a positive integer".into());
                }
            }
            "--data" => args.data = DataKind::parse(&value()?)?,
            "--min-time" => {
                let s: f64 = value()?.parse().map_err(|_| "--min-time needs seconds".to_string())?;
                if !(s.is_finite() && s >= 0.0) {
                    return Err("--min-time needs non-negative seconds".into());
                }
                args.min_time = Duration::from_secs_f64(s);
            }
            "--json" => args.json = true,
            other => return Err(format!("unknown option {other:?}; see --help")),
        }
    }
    if args.shapes.is_empty() || args.isas.is_empty() {
        return Err("nothing to run: no shapes or no ISAs".into());
    }
    Ok(Some(args))
}

/// One measured row.
struct Row {
    op: &'static str,
    shape: String,
    isa: Isa,
    kernel: &'static str,
    threads: usize,
    data: DataKind,
    ms: f64,
    gops: f64,
    peak_pct: f64,
    exact: bool,
    runs: usize,
}

impl Row {
    fn json(&self) -> String {
        format!(
            "{{\"op\":\"{}\",\"shape\":\"{}\",\"isa\":\"{}\",\"kernel\":\"{}\",\"threads\":{},\"data\":\"{}\",\
             \"ms\":{:.4},\"gops\":{:.3},\"peak_pct\":{:.2},\"exact\":{},\"runs\":{}}}",
            self.op,
            self.shape,
            self.isa,
            self.kernel,
            self.threads,
            self.data.name(),
            self.ms,
            self.gops,
            self.peak_pct,
            self.exact,
            self.runs
        )
    }
}

/// Times `run` until `min_time` has passed and at least 3 runs were made (after one
/// warm-up run), at most 1000 runs; returns the median in seconds and the run count.
fn time_runs(min_time: Duration, mut run: impl FnMut()) -> (f64, usize) {
    run();
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 3 || (start.elapsed() < min_time && times.len() < 1000) {
        let t = Instant::now();
        run();
        times.push(t.elapsed().as_secs_f64());
    }
    let runs = times.len();
    (median(&mut times), runs)
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

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("qgemm-bench: {e}");
            return ExitCode::from(2);
        }
    };

    let mut peaks = HashMap::new();
    for &isa in &args.isas {
        let p = peak::measure(isa);
        if !args.json {
            println!("peak for {isa}: {:.1} GOPS per thread ({}, measured now)", p.gops, p.probe);
        }
        peaks.insert(isa, p);
    }
    if !args.json {
        println!(
            "data: {}, u8 output, Float requantization, bias; every result checked against the reference\n",
            args.data.name()
        );
        println!(
            "{:<28} {:<10} {:<20} {:>7} {:>11} {:>9} {:>7} {:>6}",
            "shape", "isa", "kernel", "threads", "median ms", "GOPS", "% peak", "exact"
        );
    }

    let total = args.shapes.len() * args.isas.len();
    let mut done = 0;
    let mut all_exact = true;
    for (i, shape) in args.shapes.iter().enumerate() {
        let problem = Problem::new(shape.clone(), args.data, 0x5eed + i as u64);
        let mut reference: Option<Vec<u8>> = None;
        for &isa in &args.isas {
            done += 1;
            let what =
                format!("[{done}/{total}] {} {} on {isa}, {} thread(s)", shape.op(), shape.label(), args.threads);
            progress(&format!("{what}: timing..."));
            let packed = match problem.pack(isa) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("\nqgemm-bench: packing {} for {isa}: {e}", shape.label());
                    return ExitCode::from(2);
                }
            };
            let mut out = vec![0u8; problem.output_len()];
            let (secs, runs) = time_runs(args.min_time, || {
                problem.run(&packed, args.threads, &mut out).expect("the suite's arguments are valid");
            });
            // A fresh, poisoned buffer for the checked run, so that a run that wrote
            // nothing cannot pass.
            out.fill(0xa5);
            problem.run(&packed, args.threads, &mut out).expect("valid");
            let expected = reference.get_or_insert_with(|| {
                progress(&format!("{what}: computing the reference..."));
                problem.reference()
            });
            let exact = out == *expected;
            all_exact &= exact;
            let gops = shape.ops() as f64 / secs / 1e9;
            let row = Row {
                op: shape.op(),
                shape: shape.label(),
                isa,
                kernel: isa.kernel_info().map_or("?", |k| k.name),
                threads: args.threads,
                data: args.data,
                ms: secs * 1e3,
                gops,
                peak_pct: 100.0 * gops / (peaks[&isa].gops * args.threads as f64),
                exact,
                runs,
            };
            progress("");
            if args.json {
                println!("{}", row.json());
            } else {
                println!(
                    "{:<28} {:<10} {:<20} {:>7} {:>11.3} {:>9.2} {:>6.1}% {:>6}",
                    format!("{} {}", row.op, row.shape),
                    row.isa.name(),
                    row.kernel,
                    row.threads,
                    row.ms,
                    row.gops,
                    row.peak_pct,
                    if row.exact { "yes" } else { "NO" }
                );
            }
        }
    }
    if all_exact { ExitCode::SUCCESS } else { ExitCode::from(1) }
}
