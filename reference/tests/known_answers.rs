//! Known answers for the requantization schemes and the parameter helpers. The tables
//! come from `data/generate_known_answers.py`, which transcribes the published TFLite,
//! gemmlowp and ONNX Runtime code with C's integer semantics, independently of this
//! crate's Rust.

#[allow(dead_code)]
#[rustfmt::skip]
#[path = "data/known_answers.rs"]
mod known_answers_data;

use known_answers_data::{FIXED_POINT, FLOAT, ONNX_SCALE, QUANTIZE_MULTIPLIER};
use qgemm_reference::{
    Channelwise, FixedPointParams, Requantization, Requantize, onnx_float_scale, quantize_multiplier, requantize,
};

fn fixed(x: i32, m: i32, s: i32, zp: i32, min: i32, max: i32) -> [i32; 3] {
    let p = FixedPointParams::new(Channelwise::PerTensor(m), Channelwise::PerTensor(s));
    [
        Requantization::FixedPoint(p.clone()),
        Requantization::FixedPointHalfUp(p.clone()),
        Requantization::FixedPointSingleRounding(p),
    ]
    .map(|scheme| requantize(x, &Requantize::from_i32(scheme, zp, min, max), 0))
}

fn float(acc: i32, scale: f32, zp: i32, min: i32, max: i32) -> i32 {
    let scheme = Requantization::Float { scale: Channelwise::PerTensor(scale) };
    requantize(acc, &Requantize::from_i32(scheme, zp, min, max), 0)
}

#[test]
fn fixed_point_schemes_match_the_published_definitions() {
    for &(x, m, s, zp, min, max, a, b, c) in FIXED_POINT {
        assert_eq!(fixed(x, m, s, zp, min, max), [a, b, c], "x={x} m={m} shift={s} zp={zp} [{min}, {max}]");
    }
}

#[test]
fn float_scheme_matches_onnx_runtime() {
    for &(acc, bits, zp, min, max, d) in FLOAT {
        let scale = f32::from_bits(bits);
        assert_eq!(float(acc, scale, zp, min, max), d, "acc={acc} scale={scale:e} zp={zp} [{min}, {max}]");
    }
}

#[test]
fn quantize_multiplier_matches_tflite() {
    for &(bits, m, s) in QUANTIZE_MULTIPLIER {
        let real = f64::from_bits(bits);
        assert_eq!(quantize_multiplier(real), (m, s), "real={real:e}");
    }
}

#[test]
fn onnx_scale_matches_onnx_runtime() {
    for &(a, w, y, out) in ONNX_SCALE {
        let got = onnx_float_scale(f32::from_bits(a), f32::from_bits(w), f32::from_bits(y));
        assert_eq!(got.to_bits(), out);
    }
}

/// The same real multiplier, 0.25 (2^30 with shift −1, or scale 0.25), on values
/// where the four roundings disagree; every pair of schemes differs on some row.
#[test]
fn the_four_schemes_are_told_apart() {
    // x, then (a) ties away, (b) double rounding ties up, (c) single rounding, (d) f32 half-even:
    //   10·0.25 =  2.5:  3,  3,  3,  2
    //   −6·0.25 = −1.5: −2, −1, −1, −2
    //    5·0.25 =  1.25: 2,  2,  1,  1  (5·2^30/2^31 = 2.5 rounds up to 3 first)
    //  −10·0.25 = −2.5: −3, −2, −2, −2
    let rows = [(10, [3, 3, 3, 2]), (-6, [-2, -1, -1, -2]), (5, [2, 2, 1, 1]), (-10, [-3, -2, -2, -2])];
    let mut told_apart = [[false; 4]; 4];
    for (x, expected) in rows {
        let [a, b, c] = fixed(x, 1 << 30, -1, 0, -128, 127);
        let d = float(x, 0.25, 0, -128, 127);
        let got = [a, b, c, d];
        assert_eq!(got, expected, "x = {x}");
        for i in 0..4 {
            for j in 0..4 {
                told_apart[i][j] |= got[i] != got[j];
            }
        }
    }
    for (i, row) in told_apart.iter().enumerate() {
        for (j, &apart) in row.iter().enumerate() {
            assert!(i == j || apart, "schemes {i} and {j} agree on every row");
        }
    }
}

#[test]
fn the_tables_tell_the_fixed_point_schemes_apart() {
    let differs = |i: usize, j: usize| {
        FIXED_POINT.iter().any(|r| {
            let out = [r.6, r.7, r.8];
            out[i] != out[j]
        })
    };
    assert!(differs(0, 1), "no row where (a) and (b) differ");
    assert!(differs(0, 2), "no row where (a) and (c) differ");
    assert!(differs(1, 2), "no row where (b) and (c) differ");
}

#[test]
fn helpers_edge_cases() {
    // A significand that rounds up to 2^31 renormalizes; tiny values flush to zero.
    assert_eq!(quantize_multiplier(1.0 - 2f64.powi(-40)), (1 << 30, 1));
    assert_eq!(quantize_multiplier(2f64.powi(-40)), (0, 0));
    assert_eq!(quantize_multiplier(0.0), (0, 0));
    assert_eq!(qgemm_reference::quantize_bias(1.0, 0.5, 0.25), 8);
    assert_eq!(qgemm_reference::quantize_bias(-1.25, 0.5, 1.0), -2); // −2.5 → −2 (half to even)
    assert_eq!(qgemm_reference::quantize_bias(1e30, 1e-3, 1e-3), i32::MAX);
    assert_eq!(qgemm_reference::tflite_real_multiplier(0.5, 0.25, 2.0), 0.0625);
}
