//! `QGEMM_ISA` and `force_isa`. The environment variable is read once per process, so
//! each case runs this test binary again as a child with the variable set.

use std::process::Command;

use qgemm::{ErrorKind, Isa, PackedWeights, Weights};

const CHILD: &str = "QGEMM_TEST_CHILD";

fn pack_default() -> qgemm::Result<PackedWeights> {
    PackedWeights::new(Weights::kxn(&[1i8, 2, 3, 4], 2, 2))
}

fn describe(r: qgemm::Result<Isa>) -> String {
    match r {
        Ok(isa) => format!("ok:{isa}"),
        Err(e) => format!("err:{:?}", e.kind()),
    }
}

/// In a child process: reports what selection and packing do under the environment,
/// then with `force_isa(portable)`, then with the forcing lifted.
#[test]
fn child_entry() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let packed = pack_default().map(|p| p.isa());
    println!("selected={} packed={}", describe(qgemm::selected_isa()), describe(packed));
    qgemm::force_isa(Some(Isa::Portable)).unwrap();
    println!("forced={}", describe(pack_default().map(|p| p.isa())));
    qgemm::force_isa(None).unwrap();
    println!("lifted={}", describe(qgemm::selected_isa()));
}

fn run_child(value: &str) -> String {
    // Under emulation (the AArch64 runs in CI) the child needs the emulator too:
    // `QGEMM_TEST_RUNNER` names it, and its own settings (QEMU_CPU, QEMU_LD_PREFIX)
    // pass through the environment.
    let exe = std::env::current_exe().unwrap();
    let mut child = match std::env::var_os("QGEMM_TEST_RUNNER").filter(|r| !r.is_empty()) {
        Some(runner) => {
            let mut c = Command::new(runner);
            c.arg(exe);
            c
        }
        None => Command::new(exe),
    };
    let out = child
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env("QGEMM_ISA", value)
        .output()
        .expect("the test binary runs");
    assert!(out.status.success(), "child failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn qgemm_isa_forces_a_kernel() {
    let out = run_child("portable");
    assert!(out.contains("selected=ok:portable packed=ok:portable"), "{out}");
    assert!(out.contains("forced=ok:portable"), "{out}");
    assert!(out.contains("lifted=ok:portable"), "{out}");
}

#[test]
fn qgemm_isa_unknown_name_is_an_error_not_a_crash() {
    let out = run_child("sse9000");
    assert!(out.contains("selected=err:UnknownIsa packed=err:UnknownIsa"), "{out}");
    // The API call overrides the environment, and lifting it brings the error back.
    assert!(out.contains("forced=ok:portable"), "{out}");
    assert!(out.contains("lifted=err:UnknownIsa"), "{out}");
}

#[test]
fn qgemm_isa_naming_an_isa_this_cpu_cannot_run_is_an_error() {
    for isa in Isa::ALL.iter().filter(|i| !qgemm::available_isas().contains(i)) {
        let out = run_child(isa.name());
        assert!(out.contains("selected=err:IsaUnavailable packed=err:IsaUnavailable"), "{isa}: {out}");
    }
}

#[test]
fn unset_or_empty_means_detected() {
    let out = run_child("");
    let expected = format!("selected=ok:{}", qgemm::detected_isa());
    assert!(out.contains(&expected), "{out}");
}

#[test]
fn force_isa_rejects_what_cannot_run() {
    for isa in Isa::ALL.iter().filter(|i| !qgemm::available_isas().contains(i)) {
        let e = qgemm::force_isa(Some(*isa)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::IsaUnavailable);
    }
    // Detection is cached: the same list, at the same address, every time.
    assert!(std::ptr::eq(qgemm::available_isas(), qgemm::available_isas()));
}
