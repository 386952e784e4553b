//! The fuzz targets on stable: every committed seed in `fuzz/seeds/<target>/` runs
//! through the same harness the fuzzers use (`fuzz/src/harness.rs`), so CI replays
//! the corpus, and every crash a fuzzer found (its input is added as a seed) stays
//! fixed. `QGEMM_FUZZ_SEEDS` names another seeds directory (a test binary copied to a
//! host without this checkout: `benches/tools/host-bundle`).

#[path = "../../fuzz/src/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};

#[test]
fn every_committed_seed_replays() {
    let seeds = std::env::var_os("QGEMM_FUZZ_SEEDS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds"));
    for (name, target) in harness::TARGETS {
        let mut files: Vec<_> = std::fs::read_dir(seeds.join(name))
            .unwrap_or_else(|e| panic!("fuzz/seeds/{name}: {e}"))
            .map(|entry| entry.expect("a directory entry").path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "fuzz/seeds/{name} holds no seeds");
        for file in &files {
            let bytes = std::fs::read(file).expect("a readable seed");
            // The file name comes first, so that a failure says which seed it was.
            eprintln!("{name}: {}", file.display());
            target(&bytes);
        }
        eprintln!("{name}: {} seeds replayed", files.len());
    }
}
