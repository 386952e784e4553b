//! 4-bit weights, two per byte: the one thing the reference adds for them. Unpacked,
//! they are i8 weights like any other (`int4` in [−8, 7], `uint4` in [0, 15], which
//! fit i8), with their zero point, and every result follows the GEMM and conv
//! contracts as they stand.

/// Unpacks `rows` rows of `cols` 4-bit values each, stored two per byte in the ONNX
/// INT4/UINT4 and PyTorch `quint4x2` order: the element with the lower index in the
/// low nibble (bits 0–3), the next in the high nibble (bits 4–7). Each row starts on a
/// byte, so a row takes `ceil(cols / 2)` bytes, and with an odd `cols` the high nibble
/// of its last byte is unused (ignored here, whatever it holds). `signed` reads each
/// nibble as two's-complement int4 ([−8, 7]); otherwise as uint4 ([0, 15]).
///
/// The result is row-major, `rows × cols` i8 values.
///
/// # Panics
/// If `data.len() != rows · ceil(cols / 2)`.
pub fn unpack_nibbles(data: &[u8], rows: usize, cols: usize, signed: bool) -> Vec<i8> {
    let row_bytes = cols.div_ceil(2);
    assert_eq!(Some(data.len()), rows.checked_mul(row_bytes), "4-bit data length");
    let mut out = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        for c in 0..cols {
            let byte = data[r * row_bytes + c / 2];
            let nibble = if c % 2 == 0 { byte & 0x0f } else { byte >> 4 };
            let value = if signed && nibble >= 8 { i16::from(nibble) - 16 } else { i16::from(nibble) };
            out.push(value as i8);
        }
    }
    out
}
