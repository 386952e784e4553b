//! Exact whatever the caller's floating-point environment: every ISA here against the
//! reference, byte for byte, with the calling thread, and the helper threads of the
//! rayon pool, set to each rounding mode (nearest, down, up, toward zero), with
//! flush-to-zero and denormals-are-zero off and on, at 1 and 3 threads. GEMMs and
//! convolutions (indirect, depthwise, 1×1) with every scheme, u8 and i8 output, on
//! full-range and 7-bit data. Every call must also give the caller its environment back.
//!
//! The expected bytes are computed once in the default environment; the reference is
//! then checked under each environment too (its Float scheme rounds on integers).
//!
//! One test function: the pool's threads are shared by the tests of a binary.

mod common;

use common::{ConvCase, GemmCase, Rng, dequantize_for, first_mismatch, requantize_for, schemes};
use qgemm::{Conv2dParams, OutputType};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Nearest,
    Down,
    Up,
    TowardZero,
}

const MODES: [Mode; 4] = [Mode::Nearest, Mode::Down, Mode::Up, Mode::TowardZero];

#[cfg(target_arch = "x86_64")]
mod env {
    use super::Mode;
    use std::arch::asm;

    /// MXCSR: exceptions masked, the rounding field (bits 13–14), FTZ (15) and DAZ (6).
    pub fn set(mode: Mode, flush: bool) {
        let rc = match mode {
            Mode::Nearest => 0,
            Mode::Down => 1,
            Mode::Up => 2,
            Mode::TowardZero => 3,
        };
        let csr: u32 = 0x1f80 | rc << 13 | if flush { 1 << 15 | 1 << 6 } else { 0 };
        // SAFETY: loads a valid MXCSR value (reserved bits 0) from a local.
        unsafe { asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack, preserves_flags)) };
    }

    /// The control bits of MXCSR (the flags left out).
    pub fn get() -> u32 {
        let mut csr = 0u32;
        // SAFETY: stores MXCSR into a local.
        unsafe { asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack, preserves_flags)) };
        csr & !0x3f
    }

    pub const SUPPORTED: bool = true;
}

#[cfg(target_arch = "aarch64")]
mod env {
    use super::Mode;
    use std::arch::asm;

    /// FPCR: RMode (bits 22–23) and FZ (24).
    pub fn set(mode: Mode, flush: bool) {
        let rmode: u64 = match mode {
            Mode::Nearest => 0,
            Mode::Up => 1,
            Mode::Down => 2,
            Mode::TowardZero => 3,
        };
        let fpcr: u64 = rmode << 22 | if flush { 1 << 24 } else { 0 };
        // SAFETY: writes a valid FPCR value (the other control bits at their default).
        unsafe { asm!("msr fpcr, {}", in(reg) fpcr, options(nostack, preserves_flags)) };
    }

    pub fn get() -> u64 {
        let fpcr: u64;
        // SAFETY: reads FPCR.
        unsafe { asm!("mrs {}, fpcr", out(reg) fpcr, options(nomem, nostack, preserves_flags)) };
        fpcr
    }

    pub const SUPPORTED: bool = true;
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
mod env {
    use super::Mode;

    pub fn set(_: Mode, _: bool) {}

    pub fn get() -> u64 {
        0
    }

    pub const SUPPORTED: bool = false;
}

/// This thread and every thread of rayon's global pool (qgemm's helpers) in `mode`.
fn set_everywhere(mode: Mode, flush: bool) {
    env::set(mode, flush);
    rayon::broadcast(|_| env::set(mode, flush));
}

/// A GEMM or convolution case, its expected bytes, and a label.
enum Case {
    Gemm(GemmCase),
    Conv(ConvCase),
}

fn cases() -> Vec<(String, Case)> {
    let mut rng = Rng::new(0xf9e0);
    let mut out = Vec::new();
    let stages = |rng: &mut Rng, channels: usize, k: usize| {
        let mut v = Vec::new();
        for per_channel in [false, true] {
            for (i, scheme) in schemes(rng, channels, per_channel, k).into_iter().enumerate() {
                let ty = if (i + per_channel as usize).is_multiple_of(2) { OutputType::U8 } else { OutputType::I8 };
                let bias: Vec<i32> = (0..channels).map(|_| (rng.next_u64() as i32) >> 16).collect();
                v.push((ty, requantize_for(rng, scheme, ty), bias));
            }
        }
        v
    };
    // GEMMs: M large enough for 3 threads, K past one K block (the fused stages' prior
    // sums), and a GEMV.
    for (m, n, k) in [(70, 40, 70), (30, 33, 600), (1, 50, 64)] {
        for (ty, r, bias) in stages(&mut rng, n, k) {
            let mut case = GemmCase::random(&mut rng, m, n, k).with_output(ty, Some(r));
            case.stage.bias = Some(bias);
            out.push((format!("gemm {m}x{k}x{n} {ty:?} {:?}", case.stage.requantize), Case::Gemm(case)));
        }
        // f32 output: the conversion, the multiply and the f32 bias, with subnormal
        // and infinite results among them.
        for per_channel in [false, true] {
            let mut case = GemmCase::random(&mut rng, m, n, k).with_output(OutputType::F32, None);
            case.stage.dequantize = Some(dequantize_for(&mut rng, n, per_channel, true));
            out.push((format!("gemm {m}x{k}x{n} f32 {:?}", case.stage.dequantize), Case::Gemm(case)));
        }
    }
    let p = Conv2dParams::new;
    let convs = [
        ("3x3 pad 1", p([1, 9, 8, 16], 24, [3, 3]).with_padding(1, 1, 1, 1)),
        ("1x1", p([1, 7, 9, 24], 40, [1, 1])),
        ("dw 3x3", p([1, 9, 9, 32], 32, [3, 3]).with_padding(1, 1, 1, 1).with_groups(32)),
        ("dw 5x5 s2", p([1, 11, 12, 24], 24, [5, 5]).with_stride(2, 2).with_padding(2, 2, 2, 2).with_groups(24)),
    ];
    for (label, params) in convs {
        let k = params.kernel_height * params.kernel_width * params.in_channels / params.groups;
        for (i, (ty, r, bias)) in stages(&mut rng, params.out_channels, k).into_iter().enumerate() {
            let mut case = ConvCase::random(&mut rng, params);
            if i % 2 == 1 {
                case = case.seven_bit();
            }
            case.out = ty;
            case.stage.requantize = Some(r);
            case.stage.bias = Some(bias);
            out.push((format!("conv {label} {ty:?} {:?}", case.stage.requantize), Case::Conv(case)));
        }
        let mut case = ConvCase::random(&mut rng, params);
        case.out = OutputType::F32;
        case.stage.dequantize = Some(dequantize_for(&mut rng, params.out_channels, true, true));
        out.push((format!("conv {label} f32 {:?}", case.stage.dequantize), Case::Conv(case)));
    }
    out
}

#[test]
fn every_isa_is_exact_in_every_floating_point_environment() {
    if !env::SUPPORTED {
        return;
    }
    let cases: Vec<(String, Case, qgemm::reference::OutputData)> = cases()
        .into_iter()
        .map(|(label, case)| {
            let want = match &case {
                Case::Gemm(c) => c.expected(),
                Case::Conv(c) => c.expected(),
            };
            (label, case, want)
        })
        .collect();
    let default = env::get();
    let mut runs = 0;
    for mode in MODES {
        for flush in [false, true] {
            set_everywhere(mode, flush);
            let set = env::get();
            for (label, case, want) in &cases {
                let reference = match case {
                    Case::Gemm(c) => c.expected(),
                    Case::Conv(c) => c.expected(),
                };
                assert!(&reference == want, "the reference under {mode:?}, flush {flush}: {label}");
                for &isa in qgemm::available_isas() {
                    for threads in [1, 3] {
                        let (got, gaps_ok) = match case {
                            Case::Gemm(c) => c.run(isa, threads),
                            Case::Conv(c) => c.run(isa, threads),
                        };
                        let cols = match case {
                            Case::Gemm(c) => c.n,
                            Case::Conv(c) => c.params.out_channels,
                        };
                        assert!(
                            &got == want,
                            "{isa}, {threads} threads, {mode:?}, flush {flush}: {label}: {}",
                            first_mismatch(&got, want, cols)
                        );
                        assert!(gaps_ok, "{label}: wrote between output rows");
                        assert_eq!(env::get(), set, "{isa}: the caller's environment was not given back");
                        runs += 1;
                    }
                }
            }
        }
    }
    set_everywhere(Mode::Nearest, false);
    assert_eq!(env::get(), default);
    assert!(runs >= cases.len() * 8 * 2, "every case ran");
}
