//! The reference's f32 arithmetic on integers (`f32_add_nearest`, `dequantize`) against
//! the machine's own f32 operations in the default environment (round to nearest
//! even, no flushing), on random operands across every binade and on the edges:
//! signed zeros, subnormals, ties, cancellation, overflow.

use qgemm_reference::{dequantize, f32_add_nearest};

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// A finite f32 of any binade, or an edge value.
    fn f32(&mut self) -> f32 {
        let edges = [0.0, -0.0, f32::MIN_POSITIVE, -f32::MIN_POSITIVE, f32::MAX, f32::MIN, 1.0e-45, -1.0e-45, 1.0];
        match self.next() % 8 {
            0 => edges[(self.next() % edges.len() as u64) as usize],
            _ => loop {
                let x = f32::from_bits(self.next() as u32);
                if x.is_finite() {
                    break x;
                }
            },
        }
    }
}

fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits()
}

#[test]
fn addition_is_the_machines_in_the_default_environment() {
    let mut rng = Rng(0x00f3_2add);
    // Under miri (which interprets every operation) a sample of the same stream.
    for i in 0..if cfg!(miri) { 2_000 } else { 2_000_000 } {
        let a = rng.f32();
        // Half of the pairs close in magnitude (cancellation, ties), half anywhere.
        let b = if i % 2 == 0 { f32::from_bits(a.to_bits() ^ (rng.next() as u32 & 0x8000_ffff)) } else { rng.f32() };
        for (x, y) in [(a, b), (b, a), (a, -a)] {
            let want = x + y;
            let got = f32_add_nearest(x, y);
            assert!(
                same(got, want),
                "{x:e} + {y:e}: got {got:e} ({:#x}), want {want:e} ({:#x})",
                got.to_bits(),
                want.to_bits()
            );
        }
    }
    // Ties to even at a scale gap of 24 and 25 binades, and the 28/29 boundary.
    for (x, y) in [
        (1.0f32, 2f32.powi(-24)),
        (1.0 + 2f32.powi(-23), 2f32.powi(-24)),
        (1.0, 2f32.powi(-29)),
        (1.0, -2f32.powi(-29)),
    ] {
        assert!(same(f32_add_nearest(x, y), x + y), "{x:e} + {y:e}");
    }
}

#[test]
fn dequantize_is_the_machines_in_the_default_environment() {
    let mut rng = Rng(0xde9a);
    for _ in 0..if cfg!(miri) { 1_000 } else { 1_000_000 } {
        let acc = rng.next() as i32 >> (rng.next() % 32);
        let scale = rng.f32();
        let bias = rng.f32();
        assert!(same(dequantize(acc, scale, None), acc as f32 * scale), "{acc} × {scale:e}");
        assert!(same(dequantize(acc, scale, Some(bias)), acc as f32 * scale + bias), "{acc} × {scale:e} + {bias:e}");
    }
}

#[test]
fn subnormal_scales_and_biases_widen_exactly() {
    for bits in [1u32, 2, 3, 0x7f_ffff, 0x40_0000, 0x8000_0001, 0x807f_ffff] {
        let x = f32::from_bits(bits);
        assert!(same(dequantize(1, x, None), x), "{bits:#x}");
        assert!(same(dequantize(3, 1.0, Some(x)), 3.0 + x), "{bits:#x}");
        assert!(same(f32_add_nearest(x, x), x + x), "{bits:#x}");
    }
}
