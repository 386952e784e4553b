//! `unpack_nibbles` against ONNX's own unpacking of INT4/UINT4 tensors (a committed
//! table, `data/generate_nibble_answers.py`), and a GEMV over 4-bit weights through
//! the reference GEMM against sums of ONNX's dequantized values.

use qgemm_reference::{
    Channelwise, GemmProblem, OutputData, OutputStage, OutputType, WeightLayout, gemm, unpack_nibbles,
};

#[path = "data/nibble_answers.rs"]
mod answers;

#[test]
fn unpacking_is_onnx_order() {
    for &(signed, cols, zp, data, want) in answers::UNPACKED {
        let w = unpack_nibbles(data, 1, cols, signed);
        let got: Vec<i16> = w.iter().map(|&v| i16::from(v) - i16::from(zp)).collect();
        assert_eq!(got, want, "signed {signed}, {cols} values {data:02x?}, zero point {zp}");
    }
    assert!(answers::UNPACKED.len() > 500);
}

#[test]
fn rows_start_on_a_byte() {
    // Two rows of three: the second row's first value is the low nibble of byte 2,
    // and byte 1's high nibble belongs to neither.
    let w = unpack_nibbles(&[0x21, 0xf3, 0x54, 0x06], 2, 3, false);
    assert_eq!(w, [1, 2, 3, 4, 5, 6]);
    let w = unpack_nibbles(&[0x87, 0x0f], 1, 3, true);
    assert_eq!(w, [7, -8, -1]);
}

#[test]
#[should_panic(expected = "4-bit data length")]
fn a_short_row_is_refused() {
    unpack_nibbles(&[0x21], 1, 3, false);
}

#[test]
fn gemv_over_4_bit_weights_matches_onnx_dequantized_sums() {
    for &(signed, k, n, a, a_zp, bytes, zps, want) in answers::GEMV {
        let b = unpack_nibbles(bytes, n, k, signed);
        let zp = Channelwise::PerChannel(zps.to_vec());
        let problem = GemmProblem {
            m: 1,
            n,
            k,
            a,
            a_row_stride: k,
            a_zero_point: a_zp,
            b: &b,
            b_layout: WeightLayout::NxK,
            b_zero_point: &zp,
        };
        let got = gemm(&problem, &OutputStage::default(), OutputType::I32);
        assert_eq!(got, OutputData::I32(want.to_vec()), "signed {signed}");
    }
}
