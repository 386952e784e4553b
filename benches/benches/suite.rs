//! `cargo bench`: the throughput study's default suite under criterion, one group per
//! shape, one benchmark per available ISA, with throughput in operations (2·MACs).
//! Set `QGEMM_BENCH_DATA=7bit` for 7-bit activations.

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use qgemm_bench::{DataKind, Problem, default_suite};

fn suite(c: &mut Criterion) {
    let data = match std::env::var("QGEMM_BENCH_DATA") {
        Ok(v) => DataKind::parse(&v).expect("QGEMM_BENCH_DATA is full or 7bit"),
        Err(_) => DataKind::Full,
    };
    for (i, shape) in default_suite().into_iter().enumerate() {
        let problem = Problem::new(shape.clone(), data, 0x5eed + i as u64);
        let mut group = c.benchmark_group(format!("{}/{}/{}", shape.op(), shape.label(), data.name()));
        group.throughput(Throughput::Elements(shape.ops()));
        group.sample_size(10);
        group.warm_up_time(Duration::from_millis(500));
        group.measurement_time(Duration::from_secs(2));
        for &isa in qgemm::available_isas() {
            let packed = problem.pack(isa).expect("suite shapes are valid");
            let mut out = vec![0u8; problem.output_len()];
            group.bench_function(isa.name(), |b| {
                let mut workspace = qgemm::Workspace::new();
                b.iter(|| problem.run(&packed, 1, &mut out, &mut workspace).expect("valid"));
            });
        }
        group.finish();
    }
}

criterion_group!(benches, suite);
criterion_main!(benches);
