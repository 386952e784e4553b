//! The reference's own f32 rounding ([`f32_nearest`], used by the Float scheme so that
//! its bytes do not depend on the caller's floating-point environment) against the
//! hardware conversion, in the default environment this test runs in: normal values,
//! exact ties at every bit, the subnormal range and its ties, overflow, and random
//! bit patterns. The products the Float scheme rounds come last: `f32(acc) · scale`,
//! computed exactly in f64 and rounded once, equal the f32 product.

use qgemm_reference::f32_nearest;

/// A small deterministic generator (xorshift64*), so that the test needs nothing.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn check(x: f64) {
    let (want, got) = (x as f32, f32_nearest(x));
    assert!(want.to_bits() == got.to_bits() || (want.is_nan() && got.is_nan()), "{x:e}: {want:e} against {got:e}");
}

#[test]
fn f32_nearest_is_the_default_conversion() {
    // Around every f32 binade and the subnormal steps: values, halfway points and
    // their neighbours, both signs.
    for e in -160..=130 {
        let p = 2f64.powi(e);
        for k in [1.0, 1.5, 1.25, 1.0 + 2f64.powi(-23), 1.0 + 2f64.powi(-24), 1.0 + 3.0 * 2f64.powi(-24)] {
            for x in [k * p, f64::from_bits((k * p).to_bits() + 1), f64::from_bits((k * p).to_bits() - 1)] {
                check(x);
                check(-x);
            }
        }
    }
    for x in [0.0, -0.0, f64::INFINITY, f64::NEG_INFINITY, f64::NAN, f64::MAX, f64::MIN_POSITIVE, 5e-324] {
        check(x);
        check(-x);
    }
    // f32::MAX and the overflow threshold, MAX + half an ulp (a tie that rounds up to
    // infinity) and just below it.
    let max = f64::from(f32::MAX);
    let half_ulp = 2f64.powi(103);
    for x in [max, max + half_ulp, max + half_ulp - 2f64.powi(75), max + 2.0 * half_ulp] {
        check(x);
    }
    let mut rng = Rng(0x5eed_0f32_0000_0001);
    for _ in 0..if cfg!(miri) { 2_000 } else { 200_000 } {
        check(f64::from_bits(rng.next()));
        // Within f32's range, most of them.
        let exponent = (rng.next() % 300) as i32 - 160;
        check((rng.next() >> 11) as f64 * 2f64.powi(exponent - 53));
    }
}

#[test]
fn the_float_schemes_products_round_once() {
    let mut rng = Rng(0x5eed_0f32_0000_0002);
    for _ in 0..if cfg!(miri) { 2_000 } else { 200_000 } {
        let acc = rng.next() as i32 >> (rng.next() % 32);
        let scale = f32::from_bits((rng.next() as u32 & 0x7fff_ffff) % 0x7f80_0000);
        let accf = acc as f32;
        assert_eq!(f32_nearest(f64::from(acc)).to_bits(), accf.to_bits(), "{acc}");
        let want = accf * scale;
        let got = f32_nearest(f64::from(accf) * f64::from(scale));
        assert_eq!(got.to_bits(), want.to_bits(), "{acc} · {scale:e}");
    }
}
