//! On a CPU that runs the `amx-int8` tier: no tile state outlives a call. Each block
//! call configures the tiles and releases them (`tilerelease`), so a thread returns to
//! its caller with the tile state in its initial form, which the CPU reports in
//! XINUSE (`xgetbv` with ECX = 1): bit 17 (TILECFG) and bit 18 (TILEDATA) are clear.
//! A thread left with tile data in use would carry 8 KiB of extra state through every
//! context switch and signal frame. Elsewhere the test says it has nothing to check.

#![cfg(target_arch = "x86_64")]

use qgemm_kernels::driver::{GemmArgs, gemm};
use qgemm_kernels::output::{OutData, OutView, OutputStage, Param, Requant, Scheme};
use qgemm_kernels::pack::{BLayout, PackedB};
use qgemm_kernels::rows::Rows;
use qgemm_kernels::x86_64::amx_int8;

/// XINUSE's tile bits (17: TILECFG, 18: TILEDATA), or `None` where the CPU cannot
/// report XINUSE (cpuid leaf 0xD, subleaf 1, EAX bit 2).
// `__cpuid_count` is unsafe in Rust 1.89 (the MSRV) and safe in newer Rust.
#[allow(unused_unsafe)]
fn tiles_in_use() -> Option<u64> {
    // SAFETY: cpuid exists on every x86-64 CPU; leaf 0xD exists wherever XSAVE does,
    // which AMX (the only caller's condition) requires.
    let leaf = unsafe { std::arch::x86_64::__cpuid_count(0xD, 1) };
    if leaf.eax & (1 << 2) == 0 {
        return None;
    }
    let (lo, hi): (u32, u32);
    // SAFETY: `xgetbv` with ECX = 1 is defined where the bit just checked is set; it
    // only reads XINUSE into EDX:EAX.
    unsafe {
        std::arch::asm!("xgetbv", in("ecx") 1u32, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags));
    }
    Some((u64::from(hi) << 32 | u64::from(lo)) & (0b11 << 17))
}

/// One 70 × 200 × 90 product on the AMX kernel, with a fused output stage (u8) or
/// without (i32 sums), on the calling thread.
fn one_call(staged: bool) {
    let kernel = amx_int8::kernel().expect("the caller checked the tier");
    let (m, k, n) = (70, 200, 90);
    let a: Vec<u8> = (0..m * k).map(|i| (i * 7 % 256) as u8).collect();
    let b: Vec<i8> = (0..k * n).map(|i| (i * 13 % 256) as u8 as i8).collect();
    let packed = PackedB::try_new(kernel.tile(), &b, BLayout::KxN, k, n, &[0]).unwrap();
    let requant =
        Requant { scheme: Scheme::Float { scale: Param::Tensor(1.0 / 4096.0) }, zero_point: 3, min: 0, max: 255 };
    let (mut bytes, mut sums) = (vec![0u8; m * n], vec![0i32; m * n]);
    let (stage, out) = if staged {
        (OutputStage { bias: None, requant: Some(requant) }, OutData::U8(OutView::new(&mut bytes, m, n, n)))
    } else {
        (OutputStage { bias: None, requant: None }, OutData::I32(OutView::new(&mut sums, m, n, n)))
    };
    let args = GemmArgs { m, a: Rows::Matrix { data: &a, stride: k }, a_zp: 5, b: &packed, stage, columns: 0..n, out };
    gemm(kernel, args);
    assert!(bytes.iter().any(|&v| v != 0) || sums.iter().any(|&v| v != 0), "the call computed something");
}

#[test]
fn no_tile_state_outlives_a_call() {
    if amx_int8::kernel().is_none() {
        println!("amx-int8 does not run here: nothing to check");
        return;
    }
    let Some(before) = tiles_in_use() else {
        println!("this CPU does not report XINUSE: nothing to check");
        return;
    };
    assert_eq!(before, 0, "tile state in use before any call");
    for staged in [false, true] {
        one_call(staged);
        assert_eq!(tiles_in_use(), Some(0), "tile state left in use after a call (staged: {staged})");
    }
    // On a thread of its own, which has never used the tiles before.
    std::thread::spawn(|| {
        one_call(true);
        assert_eq!(tiles_in_use(), Some(0), "tile state left in use on a new thread");
    })
    .join()
    .unwrap();
    println!("32x32c4-amx-int8: XINUSE's tile bits clear after each call, on two threads");
}
