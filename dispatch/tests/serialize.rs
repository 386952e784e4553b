//! Packed weights saved and loaded: round trips on every ISA and across ISAs (the
//! loaded weights compute the reference's bytes), and every way a file can be wrong
//! (each byte flipped, each truncation, another version or kind, and inconsistent
//! fields behind a valid checksum) is an `ErrorKind::Format` error.

mod common;

use common::{ConvCase, GemmCase, Rng};
use qgemm::{
    Activations, Conv2dParams, ConvInput, ErrorKind, Isa, OutputMatrix, PackedConvWeights, PackedWeights, WeightLayout,
    Weights,
};

/// CRC-32 (IEEE) bit by bit, written independently of the library's table.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// `bytes` with its last four bytes replaced by the checksum of the rest, so that an
/// edit reaches the field checks behind the checksum.
fn resealed(mut bytes: Vec<u8>) -> Vec<u8> {
    let body = bytes.len() - 4;
    let crc = crc32(&bytes[..body]);
    bytes[body..].copy_from_slice(&crc.to_le_bytes());
    bytes
}

fn gemm_i32(case: &GemmCase, packed: &PackedWeights) -> Vec<i32> {
    let mut c = vec![0i32; case.m * case.n];
    let a = Activations::new(&case.a, case.m, case.k, case.a_zp);
    let options = qgemm::Options::new().with_isa(packed.isa());
    qgemm::gemm_with(&a, packed, &case.stage, OutputMatrix::i32(&mut c, case.m, case.n), &options).unwrap();
    c
}

fn expect_format(result: qgemm::Result<impl std::fmt::Debug>, needle: &str, what: &str) {
    let e = result.expect_err(what);
    assert_eq!(e.kind(), ErrorKind::Format, "{what}: {e}");
    assert!(e.to_string().contains(needle), "{what}: `{e}` does not say `{needle}`");
}

#[test]
fn the_checksum_is_crc32() {
    assert_eq!(crc32(b"123456789"), 0xcbf4_3926, "the standard check value");
    let packed = PackedWeights::for_isa(Isa::Portable, Weights::kxn(&[1i8, 2, 3, 4, 5, 6], 2, 3)).unwrap();
    let bytes = packed.to_bytes();
    assert_eq!(&bytes[..8], b"QGEMMWTS");
    // 8-bit weights are written as version 1 (4-bit ones as 2, the newest).
    assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), 1);
    assert_eq!(qgemm::WEIGHTS_FORMAT_VERSION, 2);
    assert_eq!(resealed(bytes.clone()), bytes, "the stored checksum is CRC-32 of the rest");
}

#[test]
fn gemm_weights_round_trip_on_every_isa_and_across_isas() {
    let mut rng = Rng::new(0x5e71a1);
    let isas = qgemm::available_isas();
    for (m, n, k) in [(5, 1, 1), (7, 33, 70), (9, 70, 129), (3, 16, 4), (1, 100, 3)] {
        for per_column in [false, true] {
            let mut case = GemmCase::random(&mut rng, m, n, k);
            if per_column {
                case.b_zp = qgemm::Channelwise::PerChannel((0..n).map(|_| rng.i8()).collect());
            }
            let want = gemm_i32(
                &case,
                &PackedWeights::for_isa(Isa::Portable, Weights::kxn(&case.b, k, n).with_zero_point(case.b_zp.clone()))
                    .unwrap(),
            );
            for &saved_on in isas {
                let weights = Weights::new(&case.b, WeightLayout::KxN, k, n).with_zero_point(case.b_zp.clone());
                let packed = PackedWeights::for_isa(saved_on, weights).unwrap();
                let bytes = packed.to_bytes();
                // The same ISA: the same weights, saved again byte for byte.
                let loaded = PackedWeights::from_bytes(&bytes).unwrap();
                assert_eq!(loaded.isa(), saved_on);
                assert_eq!(loaded.kernel_info(), packed.kernel_info());
                assert_eq!(loaded.to_bytes(), bytes, "{saved_on}: {m}x{n}x{k}");
                assert_eq!(gemm_i32(&case, &loaded), want, "{saved_on}: {m}x{n}x{k} loaded");
                // Every other ISA: repacked, the same results.
                for &load_on in isas {
                    let moved = PackedWeights::from_bytes_for(load_on, &bytes).unwrap();
                    assert_eq!(moved.isa(), load_on);
                    assert_eq!(gemm_i32(&case, &moved), want, "saved on {saved_on}, loaded on {load_on}");
                }
            }
        }
    }
}

#[test]
fn conv_weights_round_trip_on_every_isa_and_across_isas() {
    let mut rng = Rng::new(0xc0417);
    let shapes = [
        Conv2dParams::new([1, 6, 5, 8], 12, [3, 3]).with_padding(1, 1, 1, 1),
        Conv2dParams::new([1, 5, 5, 12], 6, [3, 2]).with_groups(3),
        Conv2dParams::new([2, 7, 6, 16], 16, [3, 3]).with_padding(1, 1, 1, 1).with_groups(16),
        Conv2dParams::new([1, 9, 9, 3], 5, [7, 7]).with_stride(2, 2).with_padding(3, 3, 3, 3),
        Conv2dParams::new([1, 4, 4, 7], 9, [1, 1]),
    ];
    let isas = qgemm::available_isas();
    for params in shapes {
        let case = ConvCase::random(&mut rng, params);
        let expected = case.expected();
        for &saved_on in isas {
            let bytes = case.packed(saved_on).to_bytes();
            let loaded = PackedConvWeights::from_bytes(&bytes).unwrap();
            assert_eq!(loaded.isa(), saved_on);
            assert_eq!(loaded.to_bytes(), bytes, "{saved_on}: {params:?}");
            for &load_on in isas {
                let moved = PackedConvWeights::from_bytes_for(load_on, &bytes).unwrap();
                assert_eq!(moved.path(&params).unwrap(), case.packed(load_on).path(&params).unwrap());
                let rows = params.batch * params.out_height().unwrap() * params.out_width().unwrap();
                let mut c = vec![0i32; rows * params.out_channels];
                let options = qgemm::Options::new().with_isa(load_on);
                let input = ConvInput::new(&case.input, case.input_zp);
                let out = OutputMatrix::i32(&mut c, rows, params.out_channels);
                qgemm::conv2d_with(&input, &moved, &params, &case.stage, out, &options).unwrap();
                assert_eq!(
                    qgemm::reference::OutputData::I32(c),
                    expected,
                    "saved on {saved_on}, loaded on {load_on}: {params:?}"
                );
            }
        }
    }
}

#[test]
fn every_flipped_byte_and_every_truncation_is_caught() {
    let b: Vec<i8> = (0..5 * 9).map(|i| (i * 37 % 251) as i8).collect();
    let zp: Vec<i8> = (0..9).map(|i| i - 4).collect();
    let packed = PackedWeights::for_isa(Isa::Portable, Weights::kxn(&b, 5, 9).with_zero_point(zp)).unwrap();
    let bytes = packed.to_bytes();
    for i in 0..bytes.len() {
        for bit in [0x01, 0x80] {
            let mut bad = bytes.clone();
            bad[i] ^= bit;
            let needle = match i {
                0..8 => "QGEMMWTS",
                8..10 => "version",
                _ => "checksum mismatch",
            };
            expect_format(PackedWeights::from_bytes(&bad), needle, &format!("byte {i} ^ {bit:#x}"));
        }
    }
    for len in 0..bytes.len() {
        let needle = if len < 16 { "too short" } else { "checksum" };
        expect_format(PackedWeights::from_bytes(&bytes[..len]), needle, &format!("truncated to {len} bytes"));
    }
    // Appended bytes move the checksum.
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0; 4]);
    expect_format(PackedWeights::from_bytes(&longer), "checksum", "4 bytes appended");

    let params = Conv2dParams::new([1, 4, 4, 6], 4, [3, 3]).with_groups(2);
    let w: Vec<i8> = (0..4 * 9 * 3).map(|i| (i * 11 % 256) as i8).collect();
    let conv = PackedConvWeights::for_isa(Isa::Portable, qgemm::ConvWeights::new(&w, &params)).unwrap().to_bytes();
    for i in 0..conv.len() {
        let mut bad = conv.clone();
        bad[i] ^= 0x10;
        assert_eq!(PackedConvWeights::from_bytes(&bad).unwrap_err().kind(), ErrorKind::Format, "conv byte {i}");
    }
    for len in 0..conv.len() {
        assert_eq!(PackedConvWeights::from_bytes(&conv[..len]).unwrap_err().kind(), ErrorKind::Format);
    }
}

/// The offset of the first byte after the header's names and tile.
fn after_tile(bytes: &[u8]) -> usize {
    let isa_len = bytes[12] as usize;
    let kernel_len = bytes[13 + isa_len] as usize;
    14 + isa_len + kernel_len + 16
}

#[test]
fn inconsistent_fields_behind_a_valid_checksum_are_errors() {
    let (k, n) = (5, 9);
    let b: Vec<i8> = (0..k * n).map(|i| (i * 37 % 251) as u8 as i8).collect();
    let packed = PackedWeights::for_isa(Isa::Portable, Weights::kxn(&b, k, n)).unwrap();
    let bytes = packed.to_bytes();
    let fields = after_tile(&bytes);
    let edit = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut v = bytes.clone();
        f(&mut v);
        PackedWeights::from_bytes(&resealed(v))
    };
    // A format version this build does not know, with a valid checksum.
    expect_format(edit(&|v| v[8] = 3), "format version 3", "version 3");
    // Version 2 (4-bit weights) with 8-bit panels, and version 1 claiming 4-bit ones.
    expect_format(edit(&|v| v[8] = 2), "element code 0 in a version 2 file", "version 2, i8");
    expect_format(edit(&|v| v[11] = 1), "element code 1 in a version 1 file", "version 1, 4-bit");
    // Conv weights read as GEMM weights, and the other way round.
    expect_format(edit(&|v| v[10] = 2), "holds conv weights", "kind");
    expect_format(PackedConvWeights::from_bytes(&bytes), "holds GEMM weights", "GEMM bytes as conv");
    // A tile whose A group is not a multiple of B's.
    let tile = fields - 16;
    expect_format(edit(&|v| v[tile + 12..tile + 16].fill(0)), "not a valid tile", "ka = 0");
    expect_format(edit(&|v| v[tile + 4..tile + 8].fill(0)), "not a valid tile", "nr = 0");
    // K beyond what the panels hold, and N much larger.
    expect_format(edit(&|v| v[fields] += 64), "packed for", "K + 64");
    expect_format(edit(&|v| v[fields + 12] = 1), "zero points for", "N + 2^32");
    // The zero point count, and a length that runs past the end.
    let zp = fields + 16;
    expect_format(edit(&|v| v[zp] = 1), "zero points for", "one zero point for 9 columns");
    let len_at = zp + 8 + n;
    expect_format(edit(&|v| v[len_at + 7] = 0x40), "runs past the end", "a huge panel length");
    // A value in the padding (past N in the last panel, or past K in a group).
    let data = len_at + 8;
    let panels = packed.to_bytes().len() - 4 - data;
    expect_format(edit(&|v| v[data + panels - 1] = 7), "non-zero padded value", "padding");
    // Bytes after the panels.
    expect_format(
        edit(&|v| {
            v.truncate(v.len() - 4);
            v.extend_from_slice(&[0, 0, 0, 0, 0]);
        }),
        "left over",
        "trailing byte",
    );
    // An unknown ISA or kernel name loads for the selected ISA, from the tile recorded.
    let renamed = {
        let mut v = bytes.clone();
        let isa_len = v[12] as usize;
        v[13..13 + isa_len].fill(b'z');
        resealed(v)
    };
    let loaded = PackedWeights::from_bytes(&renamed).unwrap();
    assert_eq!(loaded.isa(), qgemm::selected_isa().unwrap());
    let a: Vec<u8> = (0..3 * k).map(|i| (i * 29) as u8).collect();
    let (mut got, mut want) = (vec![0i32; 3 * n], vec![0i32; 3 * n]);
    let stage = qgemm::OutputStage::i32();
    qgemm::gemm(&Activations::new(&a, 3, k, 7), &loaded, &stage, OutputMatrix::i32(&mut got, 3, n)).unwrap();
    qgemm::gemm(&Activations::new(&a, 3, k, 7), &packed, &stage, OutputMatrix::i32(&mut want, 3, n)).unwrap();
    assert_eq!(got, want);
}
