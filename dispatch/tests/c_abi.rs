//! The C ABI (`qgemm::ffi`) called as C calls it: results equal the reference byte for
//! byte for every output type and scheme, and every misuse (null pointers, lengths
//! that do not match, values that are not the constants) returns its status, leaves
//! the output untouched and leaves a message for the thread.

use std::ffi::CStr;
use std::ptr;

use qgemm::ffi::*;
use qgemm::reference::{self, GemmProblem, OutputData};
use qgemm::{Channelwise, Conv2dParams, FixedPointParams, OutputStage, Requantization, Requantize, WeightLayout};

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn u8(&mut self) -> u8 {
        (self.next() >> 56) as u8
    }
}

/// This thread's last error message, through a buffer sized by a first call.
fn last_error() -> String {
    // SAFETY: a null buffer with length 0 only asks for the length.
    let len = unsafe { qgemm_last_error_message(ptr::null_mut(), 0) };
    let mut buf = vec![0u8; len + 1];
    // SAFETY: `buf` holds `len + 1` writable bytes.
    let again = unsafe { qgemm_last_error_message(buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(again, len);
    CStr::from_bytes_with_nul(&buf).unwrap().to_str().unwrap().to_owned()
}

/// One GEMM problem with its C descriptions.
struct Problem {
    m: usize,
    k: usize,
    n: usize,
    a: Vec<u8>,
    a_zp: u8,
    b_nxk: Vec<i8>,
    b_zp: Vec<i8>,
    bias: Vec<i32>,
}

impl Problem {
    fn random(seed: u64, m: usize, k: usize, n: usize, per_column_zp: bool) -> Problem {
        let mut rng = Rng(seed | 1);
        let a = (0..m * k).map(|_| rng.u8()).collect();
        let b_nxk = (0..k * n).map(|_| rng.u8() as i8).collect();
        let b_zp = if per_column_zp { (0..n).map(|_| rng.u8() as i8).collect() } else { vec![3] };
        let bias = (0..n).map(|_| (rng.next() as i32) >> 12).collect();
        Problem { m, k, n, a, a_zp: rng.u8(), b_nxk, b_zp, bias }
    }

    fn weights(&self) -> qgemm_weights {
        qgemm_weights {
            data: self.b_nxk.as_ptr(),
            data_len: self.b_nxk.len(),
            layout: QGEMM_LAYOUT_N_BY_K,
            k: self.k,
            n: self.n,
            zero_points: self.b_zp.as_ptr(),
            zero_points_len: self.b_zp.len(),
            element: QGEMM_WEIGHTS_I8,
        }
    }

    fn activations(&self) -> qgemm_activations {
        qgemm_activations {
            data: self.a.as_ptr(),
            data_len: self.a.len(),
            rows: self.m,
            cols: self.k,
            row_stride: self.k,
            zero_point: self.a_zp,
            signed: false,
        }
    }

    fn packed(&self) -> *mut qgemm_packed_weights {
        let mut handle = ptr::null_mut();
        // SAFETY: the weights point to live buffers of the given lengths.
        let status = unsafe { qgemm_packed_weights_new(&self.weights(), &mut handle) };
        assert_eq!(status, QGEMM_OK, "{}", last_error());
        assert!(!handle.is_null());
        handle
    }

    fn expected(&self, stage: &OutputStage, out: qgemm::OutputType) -> OutputData {
        let zp = if self.b_zp.len() == 1 {
            Channelwise::PerTensor(self.b_zp[0])
        } else {
            Channelwise::PerChannel(self.b_zp.clone())
        };
        let problem = GemmProblem {
            m: self.m,
            n: self.n,
            k: self.k,
            a: &self.a,
            a_row_stride: self.k,
            a_zero_point: self.a_zp,
            b: &self.b_nxk,
            b_layout: WeightLayout::NxK,
            b_zero_point: &zp,
        };
        reference::gemm(&problem, stage, out)
    }
}

/// The C stage for `scheme` with parameters per tensor or per column, and the Rust one.
struct Stage {
    c: qgemm_output_stage,
    rust: OutputStage,
    _keep: (Vec<i32>, Vec<i32>, Vec<f32>),
}

fn stage(p: &Problem, scheme: qgemm_scheme, per_column: bool, zero_point: i32, min: i32, max: i32) -> Stage {
    let count = if per_column { p.n } else { 1 };
    let multipliers: Vec<i32> = (0..count).map(|j| (1 << 30) + 7919 * j as i32).collect();
    let shifts: Vec<i32> = (0..count).map(|j| -12 - (j as i32 % 5)).collect();
    let scales: Vec<f32> = (0..count).map(|j| 1.0 / (4096.0 + 37.0 * j as f32)).collect();
    let cw = |v: &[i32]| if per_column { Channelwise::PerChannel(v.to_vec()) } else { Channelwise::PerTensor(v[0]) };
    let fixed = || FixedPointParams::new(cw(&multipliers), cw(&shifts));
    let requant = match scheme {
        QGEMM_SCHEME_NONE => None,
        QGEMM_SCHEME_FIXED_POINT => Some(Requantization::FixedPoint(fixed())),
        QGEMM_SCHEME_FIXED_POINT_HALF_UP => Some(Requantization::FixedPointHalfUp(fixed())),
        QGEMM_SCHEME_FIXED_POINT_SINGLE_ROUNDING => Some(Requantization::FixedPointSingleRounding(fixed())),
        _ => Some(Requantization::Float {
            scale: if per_column { Channelwise::PerChannel(scales.clone()) } else { Channelwise::PerTensor(scales[0]) },
        }),
    };
    let rust = OutputStage::new(
        Some(p.bias.clone()),
        requant.map(|scheme| Requantize::from_i32(scheme, zero_point, min, max)),
    );
    let c = qgemm_output_stage {
        bias: p.bias.as_ptr(),
        bias_len: p.bias.len(),
        scheme,
        multipliers: multipliers.as_ptr(),
        shifts: shifts.as_ptr(),
        scales: scales.as_ptr(),
        params_len: count,
        zero_point,
        min,
        max,
        f32_bias: ptr::null(),
        f32_bias_len: 0,
    };
    Stage { c, rust, _keep: (multipliers, shifts, scales) }
}

/// Runs `qgemm_gemm` into a fresh buffer with a stride gap of 3, returning the status and
/// the whole buffer (as i64, gaps included).
fn run(
    p: &Problem,
    handle: *const qgemm_packed_weights,
    stage: &qgemm_output_stage,
    ty: qgemm_output_type,
) -> (qgemm_status, Vec<i64>) {
    let stride = p.n + 3;
    let len = if p.m == 0 { 0 } else { (p.m - 1) * stride + p.n };
    let (mut i32s, mut u8s, mut i8s) = (vec![0x5a5a_5a5a_i32; len], vec![0x5a_u8; len], vec![0x5a_i8; len]);
    let data: *mut core::ffi::c_void = match ty {
        QGEMM_OUTPUT_I32 => i32s.as_mut_ptr().cast(),
        QGEMM_OUTPUT_U8 => u8s.as_mut_ptr().cast(),
        _ => i8s.as_mut_ptr().cast(),
    };
    let c = qgemm_output { r#type: ty, data, data_len: len, rows: p.m, cols: p.n, row_stride: stride };
    // SAFETY: every pointer is live with the length given.
    let status = unsafe { qgemm_gemm(&p.activations(), handle, stage, &c) };
    let out = match ty {
        QGEMM_OUTPUT_I32 => i32s.into_iter().map(i64::from).collect(),
        QGEMM_OUTPUT_U8 => u8s.into_iter().map(i64::from).collect(),
        _ => i8s.into_iter().map(i64::from).collect(),
    };
    (status, out)
}

/// The reference's output laid out with the same stride gap and fill as [`run`].
fn laid_out(p: &Problem, expected: &OutputData, ty: qgemm_output_type) -> Vec<i64> {
    let stride = p.n + 3;
    let len = if p.m == 0 { 0 } else { (p.m - 1) * stride + p.n };
    let fill = if ty == QGEMM_OUTPUT_I32 { 0x5a5a_5a5a } else { 0x5a };
    let values: Vec<i64> = match expected {
        OutputData::I32(v) => v.iter().map(|&x| i64::from(x)).collect(),
        OutputData::U8(v) => v.iter().map(|&x| i64::from(x)).collect(),
        OutputData::I8(v) => v.iter().map(|&x| i64::from(x)).collect(),
        OutputData::F32(v) => v.iter().map(|&x| i64::from(x.to_bits())).collect(),
    };
    let mut out = vec![fill; len];
    for r in 0..p.m {
        out[r * stride..][..p.n].copy_from_slice(&values[r * p.n..][..p.n]);
    }
    out
}

#[test]
fn version_is_the_crate_version() {
    // SAFETY: a static NUL-terminated string.
    let version = unsafe { CStr::from_ptr(qgemm_version()) };
    assert_eq!(version.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
}

#[test]
fn gemm_equals_the_reference_for_every_output_type_and_scheme() {
    let schemes = [
        (QGEMM_SCHEME_FIXED_POINT, "fixed point"),
        (QGEMM_SCHEME_FIXED_POINT_HALF_UP, "half up"),
        (QGEMM_SCHEME_FIXED_POINT_SINGLE_ROUNDING, "single rounding"),
        (QGEMM_SCHEME_FLOAT, "float"),
    ];
    // Under miri (which checks the boundary's pointer handling) one small shape.
    let shapes: &[(usize, usize, usize)] =
        if cfg!(miri) { &[(3, 9, 5)] } else { &[(7, 33, 19), (1, 64, 50), (17, 5, 9)] };
    for (seed, &(m, k, n)) in shapes.iter().enumerate() {
        for per_column in [false, true] {
            let p = Problem::random(seed as u64 * 7 + 11, m, k, n, per_column);
            let handle = p.packed();
            let i32_stage = stage(&p, QGEMM_SCHEME_NONE, per_column, 0, 0, 0);
            let (status, got) = run(&p, handle, &i32_stage.c, QGEMM_OUTPUT_I32);
            assert_eq!(status, QGEMM_OK, "{}", last_error());
            let want = laid_out(&p, &p.expected(&i32_stage.rust, qgemm::OutputType::I32), QGEMM_OUTPUT_I32);
            assert!(got == want, "i32 {m}x{k}x{n}");
            for (scheme, name) in schemes {
                for (ty, out_type, zp, min, max) in [
                    (QGEMM_OUTPUT_U8, qgemm::OutputType::U8, 128, 3, 250),
                    (QGEMM_OUTPUT_I8, qgemm::OutputType::I8, -5, -128, 100),
                ] {
                    let s = stage(&p, scheme, per_column, zp, min, max);
                    let (status, got) = run(&p, handle, &s.c, ty);
                    assert_eq!(status, QGEMM_OK, "{name}: {}", last_error());
                    let want = laid_out(&p, &p.expected(&s.rust, out_type), ty);
                    assert!(got == want, "{name} {out_type:?} {m}x{k}x{n} per column {per_column}");
                }
            }
            // SAFETY: a live handle, freed once.
            unsafe { qgemm_packed_weights_free(handle) };
        }
    }
}

#[test]
fn misuse_returns_its_status_and_writes_nothing() {
    let p = Problem::random(5, 4, 8, 6, false);
    let handle = p.packed();
    let s = stage(&p, QGEMM_SCHEME_FLOAT, false, 0, 0, 255);
    let untouched = vec![0x5a_i64; 3 * (p.n + 3) + p.n];
    let check = |status: qgemm_status, out: Vec<i64>, want: qgemm_status, mentions: &str| {
        assert_eq!(status, want, "{}", last_error());
        assert_eq!(out, untouched, "output written on error");
        let message = last_error();
        assert!(message.contains(mentions), "{message:?} should mention {mentions:?}");
    };

    // Null handles and descriptions.
    let (status, out) = run(&p, ptr::null(), &s.c, QGEMM_OUTPUT_U8);
    check(status, out, QGEMM_STATUS_NULL_POINTER, "weights");
    // SAFETY: null pointers are refused before use; the others are live.
    let status = unsafe { qgemm_gemm(ptr::null(), handle, &s.c, ptr::null()) };
    assert_eq!(status, QGEMM_STATUS_NULL_POINTER);
    // A null buffer with a nonzero length.
    let mut no_bias = s.c;
    no_bias.bias = ptr::null();
    let (status, out) = run(&p, handle, &no_bias, QGEMM_OUTPUT_U8);
    check(status, out, QGEMM_STATUS_NULL_POINTER, "stage.bias");
    // Lengths that do not match the shape.
    let mut short_bias = s.c;
    short_bias.bias_len = p.n - 1;
    let (status, out) = run(&p, handle, &short_bias, QGEMM_OUTPUT_U8);
    check(status, out, QGEMM_STATUS_BUFFER_LENGTH, "bias");
    // Two scales (a real buffer of two: a length beyond the buffer is the caller's lie,
    // which no C API can see) for N = 6 columns.
    let two_scales = [1.0f32 / 64.0; 2];
    let mut params = s.c;
    params.scales = two_scales.as_ptr();
    params.params_len = 2;
    let (status, out) = run(&p, handle, &params, QGEMM_OUTPUT_U8);
    check(status, out, QGEMM_STATUS_BUFFER_LENGTH, "stage.scales");
    // Values that are not the constants.
    let mut scheme = s.c;
    scheme.scheme = 99;
    let (status, out) = run(&p, handle, &scheme, QGEMM_OUTPUT_U8);
    check(status, out, QGEMM_STATUS_INVALID_ENUM, "scheme 99");
    // Errors of the Rust API keep their kind: a bad scale, a stage for another type.
    let mut scale = stage(&p, QGEMM_SCHEME_FLOAT, false, 0, 0, 255);
    let nan = [f32::NAN];
    scale.c.scales = nan.as_ptr();
    let (status, out) = run(&p, handle, &scale.c, QGEMM_OUTPUT_U8);
    check(status, out, QGEMM_STATUS_SCALE, "scale");
    let (status, out) = run(&p, handle, &s.c, QGEMM_OUTPUT_I32);
    assert_eq!((status, out.iter().all(|&v| v == 0x5a5a_5a5a)), (QGEMM_STATUS_OUTPUT_TYPE, true));

    // Packing: null arguments, a bad layout, lengths that disagree.
    let mut out_handle = ptr::null_mut();
    // SAFETY: as above.
    unsafe {
        assert_eq!(qgemm_packed_weights_new(ptr::null(), &mut out_handle), QGEMM_STATUS_NULL_POINTER);
        assert_eq!(qgemm_packed_weights_new(&p.weights(), ptr::null_mut()), QGEMM_STATUS_NULL_POINTER);
        let mut w = p.weights();
        w.layout = 7;
        assert_eq!(qgemm_packed_weights_new(&w, &mut out_handle), QGEMM_STATUS_INVALID_ENUM);
        let mut w = p.weights();
        w.data_len -= 1;
        assert_eq!(qgemm_packed_weights_new(&w, &mut out_handle), QGEMM_STATUS_BUFFER_LENGTH);
        let two_zero_points = [0i8; 2];
        let mut w = p.weights();
        w.zero_points = two_zero_points.as_ptr();
        w.zero_points_len = 2;
        assert_eq!(qgemm_packed_weights_new(&w, &mut out_handle), QGEMM_STATUS_BUFFER_LENGTH);
        assert!(out_handle.is_null(), "no handle on error");
        qgemm_packed_weights_free(ptr::null_mut());
        qgemm_packed_weights_free(handle);
    }
}

#[test]
fn isa_query_and_forcing() {
    let detected = qgemm_detected_isa();
    assert!(qgemm_isa_available(detected));
    assert!(qgemm_isa_available(QGEMM_ISA_PORTABLE));
    assert!(!qgemm_isa_available(99));
    let names = [
        (QGEMM_ISA_PORTABLE, qgemm::Isa::Portable),
        (QGEMM_ISA_AVX2, qgemm::Isa::Avx2),
        (QGEMM_ISA_AVX_VNNI, qgemm::Isa::AvxVnni),
        (QGEMM_ISA_AVX512_VNNI, qgemm::Isa::Avx512Vnni),
        (QGEMM_ISA_NEON, qgemm::Isa::Neon),
        (QGEMM_ISA_NEON_DOTPROD, qgemm::Isa::NeonDotprod),
        (QGEMM_ISA_NEON_I8MM, qgemm::Isa::NeonI8mm),
        (QGEMM_ISA_AMX_INT8, qgemm::Isa::AmxInt8),
    ];
    for (c, rust) in names {
        assert_eq!(qgemm_isa_available(c), qgemm::available_isas().contains(&rust), "{rust}");
        if !qgemm_isa_available(c) {
            assert_eq!(qgemm_force_isa(true, c), QGEMM_STATUS_ISA_UNAVAILABLE);
            assert!(last_error().contains(rust.name()));
        }
    }
    assert_eq!(qgemm_force_isa(true, 42), QGEMM_STATUS_INVALID_ENUM);
    // The spin time, process-wide (it changes CPU time only, never a result).
    assert_eq!(qgemm_set_spin_time(true, 0), QGEMM_OK);
    assert_eq!(qgemm::spin_time(), std::time::Duration::ZERO);
    assert_eq!(qgemm_set_spin_time(true, u64::MAX), QGEMM_OK);
    assert_eq!(qgemm::spin_time(), std::time::Duration::from_secs(1));
    assert_eq!(qgemm_set_spin_time(false, 7), QGEMM_OK);
    assert_ne!(qgemm::spin_time(), std::time::Duration::from_micros(7));
    // SAFETY: null is refused; a live `u32` is writable.
    unsafe {
        assert_eq!(qgemm_selected_isa(ptr::null_mut()), QGEMM_STATUS_NULL_POINTER);
        let mut selected = 99;
        assert_eq!(qgemm_selected_isa(&mut selected), QGEMM_OK);
        assert!(qgemm_isa_available(selected));
    }
}

#[test]
fn the_last_error_message_truncates_and_reports_its_length() {
    assert_eq!(qgemm_force_isa(true, 1234), QGEMM_STATUS_INVALID_ENUM);
    let full = last_error();
    assert!(full.contains("1234"), "{full}");
    let mut small = [0x7f_u8; 6];
    // SAFETY: `small` holds 6 writable bytes.
    let len = unsafe { qgemm_last_error_message(small.as_mut_ptr().cast(), small.len()) };
    assert_eq!(len, full.len());
    assert_eq!(&small[..5], &full.as_bytes()[..5]);
    assert_eq!(small[5], 0);
}

/// A convolution through the C ABI equals the reference's, for OHWI and OIHW weights,
/// grouped and depthwise, with every output type; misuse returns its status.
#[test]
fn conv2d_equals_the_reference() {
    use qgemm::reference::Conv2dProblem;
    let shapes = [
        // (batch, h, w, c, oc, kh, kw, stride, dilation, pad (t, l, b, r), groups)
        (1, 7, 6, 5, 8, 3, 3, 1, 1, (1, 1, 1, 1), 1),
        (2, 9, 5, 6, 9, 3, 2, 2, 1, (0, 1, 2, 0), 3),
        (1, 8, 8, 4, 8, 3, 3, 1, 2, (2, 2, 2, 2), 4),
    ];
    // Under miri one small grouped shape.
    let shapes = if cfg!(miri) { &[(1, 4, 3, 4, 4, 2, 2, 1, 1, (1, 0, 0, 1), 2)][..] } else { &shapes[..] };
    for (seed, &(batch, h, w, c, oc, kh, kw, stride, dilation, (pt, pl, pb, pr), groups)) in shapes.iter().enumerate() {
        let mut rng = Rng(seed as u64 * 31 + 7);
        let cg = c / groups;
        let input: Vec<u8> = (0..batch * h * w * c).map(|_| rng.u8()).collect();
        let ohwi: Vec<i8> = (0..oc * kh * kw * cg).map(|_| rng.u8() as i8).collect();
        let zps: Vec<i8> = (0..oc).map(|_| rng.u8() as i8).collect();
        let bias: Vec<i32> = (0..oc).map(|_| (rng.next() as i32) >> 14).collect();
        let x_zp = rng.u8();
        let params = qgemm_conv2d_params {
            batch,
            in_height: h,
            in_width: w,
            in_channels: c,
            out_channels: oc,
            kernel_height: kh,
            kernel_width: kw,
            stride_height: stride,
            stride_width: stride,
            dilation_height: dilation,
            dilation_width: dilation,
            pad_top: pt,
            pad_left: pl,
            pad_bottom: pb,
            pad_right: pr,
            groups,
        };
        let rust_params = rust_params(&params);
        let rows = batch * rust_params.out_height().unwrap() * rust_params.out_width().unwrap();
        // OIHW from OHWI: [o][i][y][x] = ohwi[o][y][x][i].
        let mut oihw = vec![0i8; ohwi.len()];
        for o in 0..oc {
            for y in 0..kh {
                for x in 0..kw {
                    for i in 0..cg {
                        oihw[((o * cg + i) * kh + y) * kw + x] = ohwi[((o * kh + y) * kw + x) * cg + i];
                    }
                }
            }
        }
        let zp = Channelwise::PerChannel(zps.clone());
        let problem = Conv2dProblem {
            params: rust_params,
            input: &input,
            input_zero_point: x_zp,
            weights: &ohwi,
            weight_zero_point: &zp,
        };
        let scales: Vec<f32> = (0..oc).map(|j| 1.0 / (512.0 + 3.0 * j as f32)).collect();
        for (layout, data) in [(QGEMM_FILTER_OHWI, &ohwi), (QGEMM_FILTER_OIHW, &oihw)] {
            let weights = qgemm_conv_weights {
                data: data.as_ptr(),
                data_len: data.len(),
                layout,
                out_channels: oc,
                kernel_height: kh,
                kernel_width: kw,
                in_channels: c,
                groups,
                zero_points: zps.as_ptr(),
                zero_points_len: oc,
                element: QGEMM_WEIGHTS_I8,
            };
            let mut handle = ptr::null_mut();
            // SAFETY: the weights point to live buffers of the given lengths.
            assert_eq!(unsafe { qgemm_packed_conv_weights_new(&weights, &mut handle) }, QGEMM_OK, "{}", last_error());
            let conv_input =
                qgemm_conv_input { data: input.as_ptr(), data_len: input.len(), zero_point: x_zp, signed: false };
            for (ty, out_type, scheme) in [
                (QGEMM_OUTPUT_I32, qgemm::OutputType::I32, QGEMM_SCHEME_NONE),
                (QGEMM_OUTPUT_U8, qgemm::OutputType::U8, QGEMM_SCHEME_FLOAT),
                (QGEMM_OUTPUT_I8, qgemm::OutputType::I8, QGEMM_SCHEME_FLOAT),
            ] {
                let (zero_point, min, max) = if ty == QGEMM_OUTPUT_I8 { (-3, -128, 127) } else { (120, 0, 255) };
                let c_stage = qgemm_output_stage {
                    bias: bias.as_ptr(),
                    bias_len: oc,
                    scheme,
                    multipliers: ptr::null(),
                    shifts: ptr::null(),
                    scales: scales.as_ptr(),
                    params_len: oc,
                    zero_point,
                    min,
                    max,
                    f32_bias: ptr::null(),
                    f32_bias_len: 0,
                };
                let rust_stage = OutputStage::new(
                    Some(bias.clone()),
                    (scheme == QGEMM_SCHEME_FLOAT).then(|| {
                        let scale = Channelwise::PerChannel(scales.clone());
                        Requantize::from_i32(Requantization::Float { scale }, zero_point, min, max)
                    }),
                );
                let want: Vec<i64> = match reference::conv2d(&problem, &rust_stage, out_type) {
                    OutputData::I32(v) => v.into_iter().map(i64::from).collect(),
                    OutputData::U8(v) => v.into_iter().map(i64::from).collect(),
                    OutputData::I8(v) => v.into_iter().map(i64::from).collect(),
                    OutputData::F32(v) => v.into_iter().map(|x| i64::from(x.to_bits())).collect(),
                };
                let mut buf = vec![0i32; rows * oc]; // big enough for every type
                let out = qgemm_output {
                    r#type: ty,
                    data: buf.as_mut_ptr().cast(),
                    data_len: rows * oc,
                    rows,
                    cols: oc,
                    row_stride: oc,
                };
                // SAFETY: every pointer is live with the length given.
                let status = unsafe { qgemm_conv2d(&conv_input, handle, &params, &c_stage, &out) };
                assert_eq!(status, QGEMM_OK, "{}", last_error());
                let got: Vec<i64> = match ty {
                    QGEMM_OUTPUT_I32 => buf.iter().map(|&v| i64::from(v)).collect(),
                    // SAFETY: `buf` holds `rows · oc` i32, so at least as many bytes.
                    QGEMM_OUTPUT_U8 => unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), rows * oc) }
                        .iter()
                        .map(|&v| i64::from(v))
                        .collect(),
                    // SAFETY: as above.
                    _ => unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<i8>(), rows * oc) }
                        .iter()
                        .map(|&v| i64::from(v))
                        .collect(),
                };
                assert!(got == want, "conv {seed} layout {layout} type {ty}");
            }
            // Misuse: a short input, a null stage, an unknown filter layout.
            let short = qgemm_conv_input { data_len: input.len() - 1, ..conv_input };
            let mut buf = vec![0x5a5a_5a5a_i32; rows * oc];
            let out = qgemm_output {
                r#type: QGEMM_OUTPUT_I32,
                data: buf.as_mut_ptr().cast(),
                data_len: rows * oc,
                rows,
                cols: oc,
                row_stride: oc,
            };
            let none = qgemm_output_stage {
                bias: ptr::null(),
                bias_len: 0,
                scheme: QGEMM_SCHEME_NONE,
                multipliers: ptr::null(),
                shifts: ptr::null(),
                scales: ptr::null(),
                params_len: 0,
                zero_point: 0,
                min: 0,
                max: 0,
                f32_bias: ptr::null(),
                f32_bias_len: 0,
            };
            // SAFETY: as above.
            unsafe {
                assert_eq!(qgemm_conv2d(&short, handle, &params, &none, &out), QGEMM_STATUS_BUFFER_LENGTH);
                assert_eq!(qgemm_conv2d(&conv_input, handle, &params, ptr::null(), &out), QGEMM_STATUS_NULL_POINTER);
                let mut bad = weights;
                bad.layout = 5;
                let mut other = ptr::null_mut();
                assert_eq!(qgemm_packed_conv_weights_new(&bad, &mut other), QGEMM_STATUS_INVALID_ENUM);
                assert!(other.is_null());
                qgemm_packed_conv_weights_free(handle);
            }
            assert!(buf.iter().all(|&v| v == 0x5a5a_5a5a), "output written on error");
        }
    }
}

/// A C output buffer of `ty` with a stride gap of 3, filled as [`laid_out`] fills gaps.
struct Out {
    ty: qgemm_output_type,
    i32s: Vec<i32>,
    u8s: Vec<u8>,
    i8s: Vec<i8>,
    rows: usize,
    cols: usize,
}

impl Out {
    fn new(ty: qgemm_output_type, rows: usize, cols: usize) -> Out {
        let len = if rows == 0 { 0 } else { (rows - 1) * (cols + 3) + cols };
        Out { ty, i32s: vec![0x5a5a_5a5a; len], u8s: vec![0x5a; len], i8s: vec![0x5a; len], rows, cols }
    }

    fn c(&mut self) -> qgemm_output {
        let (data, data_len): (*mut core::ffi::c_void, usize) = match self.ty {
            QGEMM_OUTPUT_I32 => (self.i32s.as_mut_ptr().cast(), self.i32s.len()),
            QGEMM_OUTPUT_U8 => (self.u8s.as_mut_ptr().cast(), self.u8s.len()),
            _ => (self.i8s.as_mut_ptr().cast(), self.i8s.len()),
        };
        qgemm_output { r#type: self.ty, data, data_len, rows: self.rows, cols: self.cols, row_stride: self.cols + 3 }
    }

    fn values(&self) -> Vec<i64> {
        match self.ty {
            QGEMM_OUTPUT_I32 => self.i32s.iter().map(|&v| i64::from(v)).collect(),
            QGEMM_OUTPUT_U8 => self.u8s.iter().map(|&v| i64::from(v)).collect(),
            _ => self.i8s.iter().map(|&v| i64::from(v)).collect(),
        }
    }
}

/// Runs every task of `tasks` on `threads` threads in a scrambled order, each with a
/// workspace of its own (or none, for the odd threads), asserting each status.
fn run_all(tasks: *mut qgemm_tasks, threads: usize) {
    let mut count = 0;
    // SAFETY: a live handle and a writable count.
    assert_eq!(unsafe { qgemm_tasks_count(tasks, &mut count) }, QGEMM_OK, "{}", last_error());
    let order: Vec<usize> = (0..count).map(|i| (i * 7 + count / 2) % count).collect();
    let order = if count % 7 == 0 { (0..count).rev().collect() } else { order };
    /// The handle, shared by the threads as a C pool would share it.
    #[derive(Clone, Copy)]
    struct Shared(*const qgemm_tasks);
    // SAFETY: qgemm documents that any number of threads may run tasks of one handle.
    unsafe impl Send for Shared {}
    impl Shared {
        // A method, so that closures capture the whole `Shared`, not its pointer field.
        fn get(self) -> *const qgemm_tasks {
            self.0
        }
    }
    let shared = Shared(tasks);
    std::thread::scope(|s| {
        for t in 0..threads {
            let order = &order;
            s.spawn(move || {
                let tasks = shared.get();
                let mut ws = ptr::null_mut();
                if t % 2 == 0 {
                    // SAFETY: a writable handle slot.
                    assert_eq!(unsafe { qgemm_workspace_new(&mut ws) }, QGEMM_OK);
                }
                for &i in order.iter().skip(t).step_by(threads) {
                    // SAFETY: a live tasks handle; `ws` is null or this thread's own.
                    let status = unsafe { qgemm_tasks_run(tasks, i, ws) };
                    assert_eq!(status, QGEMM_OK, "task {i}: {}", last_error());
                }
                // SAFETY: null or this thread's live workspace.
                unsafe { qgemm_workspace_free(ws) };
            });
        }
    });
}

#[test]
fn threaded_calls_and_tasks_equal_the_reference() {
    // Under miri, a small problem that still cuts into several tasks.
    let (m, k, n, threads) = if cfg!(miri) { (9, 12, 10, 2) } else { (70, 130, 90, 3) };
    let p = Problem::random(0x7415, m, k, n, true);
    let handle = p.packed();
    let s = stage(&p, QGEMM_SCHEME_FLOAT, true, 128, 0, 255);
    let want = laid_out(&p, &p.expected(&s.rust, qgemm::OutputType::U8), QGEMM_OUTPUT_U8);

    let mut ws = ptr::null_mut();
    // SAFETY: a writable handle slot.
    assert_eq!(unsafe { qgemm_workspace_new(&mut ws) }, QGEMM_OK);
    let counts: &[usize] = if cfg!(miri) { &[2] } else { &[1, 2, 3, 7] };
    for &t in counts {
        for workspace in [ptr::null_mut(), ws] {
            let mut out = Out::new(QGEMM_OUTPUT_U8, m, n);
            // SAFETY: every pointer is live with the length given; `workspace` is null
            // or this thread's.
            let status = unsafe { qgemm_gemm_threaded(&p.activations(), handle, &s.c, &out.c(), t, workspace) };
            assert_eq!(status, QGEMM_OK, "{}", last_error());
            assert_eq!(out.values(), want, "{t} threads");
        }
    }

    let (rows, cols) = ([0, 1, m / 2, m / 2, m], [0, 3, n / 2 + 1, n]);
    let grid = |r: &[usize], c: &[usize]| qgemm_partition {
        threads: 0,
        row_bounds: r.as_ptr(),
        row_bounds_len: r.len(),
        col_bounds: c.as_ptr(),
        col_bounds_len: c.len(),
    };
    let auto = qgemm_partition { threads, ..grid(&[], &[]) };
    let auto = qgemm_partition { row_bounds: ptr::null(), ..auto };
    for partition in [auto, grid(&rows, &cols)] {
        let mut out = Out::new(QGEMM_OUTPUT_U8, m, n);
        let mut tasks = ptr::null_mut();
        // SAFETY: every pointer is live, and stays so until the handle is freed.
        let status = unsafe { qgemm_gemm_tasks_new(&p.activations(), handle, &s.c, &out.c(), &partition, &mut tasks) };
        assert_eq!(status, QGEMM_OK, "{}", last_error());
        run_all(tasks, threads);
        // Misuse after the run: a task again, and an index past the end.
        let mut count = 0;
        // SAFETY: a live handle and a writable count.
        assert_eq!(unsafe { qgemm_tasks_count(tasks, &mut count) }, QGEMM_OK);
        for index in [0, count] {
            // SAFETY: a live handle; a null workspace.
            assert_eq!(unsafe { qgemm_tasks_run(tasks, index, ptr::null_mut()) }, QGEMM_STATUS_TASK);
        }
        // SAFETY: a live handle, freed once.
        unsafe { qgemm_tasks_free(tasks) };
        assert_eq!(out.values(), want, "partition {partition:?}");
    }

    // Misuse that writes nothing: zero threads, a grid that misses the last row, no
    // partition, no handle.
    let mut out = Out::new(QGEMM_OUTPUT_U8, m, n);
    let untouched = out.values();
    let short = [0, m - 1];
    let cases =
        [(qgemm_partition { threads: 0, ..auto }, QGEMM_STATUS_THREADS), (grid(&short, &cols), QGEMM_STATUS_PARTITION)];
    for (partition, status) in cases {
        let mut tasks = ptr::null_mut();
        // SAFETY: every pointer is live.
        let got = unsafe { qgemm_gemm_tasks_new(&p.activations(), handle, &s.c, &out.c(), &partition, &mut tasks) };
        assert_eq!(got, status, "{}", last_error());
        assert!(tasks.is_null());
    }
    let mut tasks = ptr::null_mut();
    // SAFETY: every pointer is live or null.
    let got = unsafe { qgemm_gemm_tasks_new(&p.activations(), handle, &s.c, &out.c(), ptr::null(), &mut tasks) };
    assert_eq!(got, QGEMM_STATUS_NULL_POINTER);
    assert!(last_error().contains("partition"), "{}", last_error());
    // SAFETY: every pointer is live.
    let got = unsafe { qgemm_gemm_threaded(&p.activations(), handle, &s.c, &out.c(), 0, ws) };
    assert_eq!(got, QGEMM_STATUS_THREADS);
    // SAFETY: null handles are refused.
    assert_eq!(unsafe { qgemm_tasks_run(ptr::null(), 0, ptr::null_mut()) }, QGEMM_STATUS_NULL_POINTER);
    assert_eq!(out.values(), untouched);
    // SAFETY: live handles, freed once.
    unsafe {
        qgemm_workspace_free(ws);
        qgemm_packed_weights_free(handle);
    }
}

#[test]
fn conv_tasks_and_threads_equal_the_reference() {
    use qgemm::reference::Conv2dProblem;
    // A grouped 3×3 convolution: 2 images of 6×7, 8 → 12 channels in 4 groups.
    let (batch, h, w, c, oc, groups) = if cfg!(miri) { (1, 3, 4, 4, 4, 2) } else { (2, 6, 7, 8, 12, 4) };
    let mut rng = Rng(0x0074_15c0);
    let cg = c / groups;
    let input: Vec<u8> = (0..batch * h * w * c).map(|_| rng.u8()).collect();
    let ohwi: Vec<i8> = (0..oc * 9 * cg).map(|_| rng.u8() as i8).collect();
    let zps = [5i8];
    let x_zp = rng.u8();
    let params = padded_3x3([batch, h, w, c], oc, groups);
    let rust_params = rust_params(&params);
    let rows = batch * h * w;
    let problem = Conv2dProblem {
        params: rust_params,
        input: &input,
        input_zero_point: x_zp,
        weights: &ohwi,
        weight_zero_point: &Channelwise::PerTensor(5),
    };
    let no_stage = OutputStage::default();
    let values = match reference::conv2d(&problem, &no_stage, qgemm::OutputType::I32) {
        OutputData::I32(v) => v,
        _ => unreachable!(),
    };
    let mut want = vec![0x5a5a_5a5a_i64; (rows - 1) * (oc + 3) + oc];
    for r in 0..rows {
        for j in 0..oc {
            want[r * (oc + 3) + j] = i64::from(values[r * oc + j]);
        }
    }
    let weights = qgemm_conv_weights {
        data: ohwi.as_ptr(),
        data_len: ohwi.len(),
        layout: QGEMM_FILTER_OHWI,
        out_channels: oc,
        kernel_height: 3,
        kernel_width: 3,
        in_channels: c,
        groups,
        zero_points: zps.as_ptr(),
        zero_points_len: 1,
        element: QGEMM_WEIGHTS_I8,
    };
    let mut handle = ptr::null_mut();
    // SAFETY: the weights point to live buffers of the given lengths.
    assert_eq!(unsafe { qgemm_packed_conv_weights_new(&weights, &mut handle) }, QGEMM_OK, "{}", last_error());
    let conv_input = qgemm_conv_input { data: input.as_ptr(), data_len: input.len(), zero_point: x_zp, signed: false };
    let c_stage = qgemm_output_stage {
        bias: ptr::null(),
        bias_len: 0,
        scheme: QGEMM_SCHEME_NONE,
        multipliers: ptr::null(),
        shifts: ptr::null(),
        scales: ptr::null(),
        params_len: 0,
        zero_point: 0,
        min: 0,
        max: 0,
        f32_bias: ptr::null(),
        f32_bias_len: 0,
    };

    let mut out = Out::new(QGEMM_OUTPUT_I32, rows, oc);
    // SAFETY: every pointer is live with the length given.
    let status = unsafe { qgemm_conv2d_threaded(&conv_input, handle, &params, &c_stage, &out.c(), 3, ptr::null_mut()) };
    assert_eq!(status, QGEMM_OK, "{}", last_error());
    assert_eq!(out.values(), want, "3 threads");

    // Pixels cut inside image rows, channels inside groups.
    let (pixels, channels) = ([0, 2, w + 1, rows / 2, rows], [0, 1, oc / 2 + 1, oc]);
    let partition = qgemm_partition {
        threads: 0,
        row_bounds: pixels.as_ptr(),
        row_bounds_len: pixels.len(),
        col_bounds: channels.as_ptr(),
        col_bounds_len: channels.len(),
    };
    let mut out = Out::new(QGEMM_OUTPUT_I32, rows, oc);
    let mut tasks = ptr::null_mut();
    // SAFETY: every pointer is live, and stays so until the handle is freed.
    let status =
        unsafe { qgemm_conv2d_tasks_new(&conv_input, handle, &params, &c_stage, &out.c(), &partition, &mut tasks) };
    assert_eq!(status, QGEMM_OK, "{}", last_error());
    run_all(tasks, 2);
    // SAFETY: live handles, freed once.
    unsafe {
        qgemm_tasks_free(tasks);
        qgemm_packed_conv_weights_free(handle);
    }
    assert_eq!(out.values(), want, "grid");
}

/// Thread counts past `qgemm::MAX_THREADS` (a C caller's `SIZE_MAX`, 2^62) are
/// `QGEMM_STATUS_THREADS` with the output untouched, on the threaded calls and in a
/// partition; `MAX_THREADS` itself runs (on as many threads as there are tasks).
#[test]
fn absurd_thread_counts_are_refused() {
    let p = Problem::random(0x7416, 20, 40, 30, false);
    let handle = p.packed();
    let s = stage(&p, QGEMM_SCHEME_FLOAT, false, 128, 0, 255);
    let want = laid_out(&p, &p.expected(&s.rust, qgemm::OutputType::U8), QGEMM_OUTPUT_U8);
    for threads in [usize::MAX, 1 << 62, qgemm::MAX_THREADS + 1] {
        let mut out = Out::new(QGEMM_OUTPUT_U8, p.m, p.n);
        let untouched = out.values();
        // SAFETY: every pointer is live with the length given.
        let status = unsafe { qgemm_gemm_threaded(&p.activations(), handle, &s.c, &out.c(), threads, ptr::null_mut()) };
        assert_eq!(status, QGEMM_STATUS_THREADS, "{threads} threads");
        assert!(last_error().contains("4096"), "{}", last_error());
        assert_eq!(out.values(), untouched);
        let partition = qgemm_partition {
            threads,
            row_bounds: ptr::null(),
            row_bounds_len: 0,
            col_bounds: ptr::null(),
            col_bounds_len: 0,
        };
        let mut tasks = ptr::null_mut();
        // SAFETY: every pointer is live.
        let got = unsafe { qgemm_gemm_tasks_new(&p.activations(), handle, &s.c, &out.c(), &partition, &mut tasks) };
        assert_eq!(got, QGEMM_STATUS_THREADS, "{threads} threads in a partition");
        assert!(tasks.is_null());
    }
    let mut out = Out::new(QGEMM_OUTPUT_U8, p.m, p.n);
    // SAFETY: every pointer is live with the length given.
    let status =
        unsafe { qgemm_gemm_threaded(&p.activations(), handle, &s.c, &out.c(), qgemm::MAX_THREADS, ptr::null_mut()) };
    assert_eq!(status, QGEMM_OK, "{}", last_error());
    assert_eq!(out.values(), want);
    // SAFETY: a live handle, freed once.
    unsafe { qgemm_packed_weights_free(handle) };
}

/// One workspace handle used by two threads at once (which the header forbids): each
/// call either runs alone on it and is exact, or finds it in use and fails with
/// `QGEMM_STATUS_WORKSPACE_BUSY`, writing nothing. Never wrong output. Bounded: a
/// fixed number of calls per thread.
#[test]
fn a_workspace_shared_by_two_threads_is_refused_not_corrupted() {
    if cfg!(miri) {
        return; // thousands of calls
    }
    let p = Problem::random(0x7417, 96, 300, 64, true);
    let handle = p.packed();
    let s = stage(&p, QGEMM_SCHEME_FLOAT, true, 128, 0, 255);
    let want = laid_out(&p, &p.expected(&s.rust, qgemm::OutputType::U8), QGEMM_OUTPUT_U8);
    let mut ws = ptr::null_mut();
    // SAFETY: a writable handle slot.
    assert_eq!(unsafe { qgemm_workspace_new(&mut ws) }, QGEMM_OK);
    /// The handles, shared by the threads as a careless C caller would share them.
    #[derive(Clone, Copy)]
    struct Shared(*mut qgemm_workspace, *const qgemm_packed_weights);
    // SAFETY: the point of the test: qgemm must detect the sharing of the workspace;
    // the weights handle may be shared (immutable).
    unsafe impl Send for Shared {}
    impl Shared {
        fn get(self) -> (*mut qgemm_workspace, *const qgemm_packed_weights) {
            (self.0, self.1)
        }
    }
    let shared = Shared(ws, handle);
    let (wrong, busy) = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..2)
            .map(|_| {
                let (p, want) = (&p, &want);
                scope.spawn(move || {
                    let (ws, handle) = shared.get();
                    let s = stage(p, QGEMM_SCHEME_FLOAT, true, 128, 0, 255);
                    let (mut wrong, mut busy) = (0, 0);
                    for _ in 0..400 {
                        let mut out = Out::new(QGEMM_OUTPUT_U8, p.m, p.n);
                        let untouched = out.values();
                        // SAFETY: every pointer is live with the length given; the
                        // workspace is shared on purpose.
                        let status = unsafe { qgemm_gemm_threaded(&p.activations(), handle, &s.c, &out.c(), 1, ws) };
                        match status {
                            QGEMM_OK => wrong += out.values().iter().zip(want).filter(|(a, b)| a != b).count(),
                            QGEMM_STATUS_WORKSPACE_BUSY => {
                                busy += 1;
                                assert_eq!(out.values(), untouched, "a refused call wrote");
                                assert!(last_error().contains("in use"), "{}", last_error());
                            }
                            other => panic!("status {other}: {}", last_error()),
                        }
                    }
                    (wrong, busy)
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).fold((0, 0), |(w, b), (w2, b2)| (w + w2, b + b2))
    });
    assert_eq!(wrong, 0, "wrong elements from a shared workspace ({busy} calls refused)");
    // The workspace is free again: a call on it runs.
    let mut out = Out::new(QGEMM_OUTPUT_U8, p.m, p.n);
    // SAFETY: every pointer is live with the length given; the workspace is this
    // thread's alone now.
    let status = unsafe { qgemm_gemm_threaded(&p.activations(), handle, &s.c, &out.c(), 2, ws) };
    assert_eq!(status, QGEMM_OK, "{}", last_error());
    assert_eq!(out.values(), want);
    // SAFETY: live handles, freed once.
    unsafe {
        qgemm_workspace_free(ws);
        qgemm_packed_weights_free(handle);
    }
}

/// The Rust parameters of the same convolution (the library converts them internally;
/// its Rust API has no conversion from C types).
fn rust_params(p: &qgemm_conv2d_params) -> qgemm::Conv2dParams {
    qgemm::Conv2dParams::new(
        [p.batch, p.in_height, p.in_width, p.in_channels],
        p.out_channels,
        [p.kernel_height, p.kernel_width],
    )
    .with_stride(p.stride_height, p.stride_width)
    .with_dilation(p.dilation_height, p.dilation_width)
    .with_padding(p.pad_top, p.pad_left, p.pad_bottom, p.pad_right)
    .with_groups(p.groups)
}

#[test]
fn weights_save_and_load_through_c() {
    let p = Problem::random(0x5a7e, 9, 70, 33, true);
    let handle = p.packed();
    let mut len = 0usize;
    // SAFETY: a null buffer only asks for the length; `len` is writable.
    assert_eq!(unsafe { qgemm_packed_weights_save(handle, ptr::null_mut(), 0, &mut len) }, QGEMM_OK);
    let mut bytes = vec![0u8; len];
    // One byte too few: refused, with the length still reported.
    let mut reported = 0usize;
    // SAFETY: `bytes` holds `len - 1` writable bytes at least.
    let status = unsafe { qgemm_packed_weights_save(handle, bytes.as_mut_ptr(), len - 1, &mut reported) };
    assert_eq!((status, reported), (QGEMM_STATUS_BUFFER_LENGTH, len), "{}", last_error());
    // SAFETY: `bytes` holds `len` writable bytes.
    assert_eq!(unsafe { qgemm_packed_weights_save(handle, bytes.as_mut_ptr(), len, &mut reported) }, QGEMM_OK);
    let mut loaded = ptr::null_mut();
    // SAFETY: `bytes` holds `len` bytes; `loaded` is writable.
    assert_eq!(unsafe { qgemm_packed_weights_load(bytes.as_ptr(), len, &mut loaded) }, QGEMM_OK, "{}", last_error());
    let s = stage(&p, QGEMM_SCHEME_FLOAT, true, 3, 0, 255);
    let (status, got) = run(&p, loaded, &s.c, QGEMM_OUTPUT_U8);
    assert_eq!(status, QGEMM_OK);
    assert_eq!(got, laid_out(&p, &p.expected(&s.rust, qgemm::OutputType::U8), QGEMM_OUTPUT_U8));
    // A flipped byte is QGEMM_STATUS_FORMAT, and nothing is written to `out`.
    bytes[len / 2] ^= 1;
    let mut untouched = ptr::null_mut();
    // SAFETY: as above.
    let status = unsafe { qgemm_packed_weights_load(bytes.as_ptr(), len, &mut untouched) };
    assert_eq!(status, QGEMM_STATUS_FORMAT);
    assert!(untouched.is_null() && last_error().contains("checksum mismatch"), "{}", last_error());
    // SAFETY: live handles, freed once.
    unsafe {
        qgemm_packed_weights_free(loaded);
        qgemm_packed_weights_free(handle);
    }
}

#[test]
fn operators_through_c_equal_the_reference() {
    let p = Problem::random(0x0b5, 12, 40, 17, false);
    let handle = p.packed();
    let s = stage(&p, QGEMM_SCHEME_FIXED_POINT, true, -5, -100, 127);
    let mut linear = ptr::null_mut();
    // SAFETY: live handle and stage; `linear` is writable.
    let status = unsafe { qgemm_linear_new(handle, p.a_zp, false, &s.c, QGEMM_OUTPUT_I8, 2, &mut linear) };
    assert_eq!(status, QGEMM_OK, "{}", last_error());
    // SAFETY: the weights were copied into the operator.
    unsafe { qgemm_packed_weights_free(handle) };
    let mut out = vec![0i8; p.m * p.n];
    let c = qgemm_output {
        r#type: QGEMM_OUTPUT_I8,
        data: out.as_mut_ptr().cast(),
        data_len: out.len(),
        rows: p.m,
        cols: p.n,
        row_stride: p.n,
    };
    // SAFETY: live operator and buffers of the lengths given; a fresh workspace.
    let status = unsafe { qgemm_linear_run(linear, p.a.as_ptr(), p.a.len(), p.m, &c, ptr::null_mut()) };
    assert_eq!(status, QGEMM_OK, "{}", last_error());
    assert_eq!(OutputData::I8(out.clone()), p.expected(&s.rust, qgemm::OutputType::I8));
    // A u8 output for an i8 layer: refused, nothing written.
    let mut wrong = vec![9u8; p.m * p.n];
    let c8 = qgemm_output { r#type: QGEMM_OUTPUT_U8, data: wrong.as_mut_ptr().cast(), ..c };
    // SAFETY: as above.
    let status = unsafe { qgemm_linear_run(linear, p.a.as_ptr(), p.a.len(), p.m, &c8, ptr::null_mut()) };
    assert_eq!(status, QGEMM_STATUS_OUTPUT_TYPE, "{}", last_error());
    assert!(wrong.iter().all(|&x| x == 9));
    // SAFETY: a live handle, freed once.
    unsafe { qgemm_linear_free(linear) };

    // A convolution operator, reshaped once.
    let params = padded_3x3([1, 6, 5, 4], 6, 2);
    let w: Vec<i8> = (0..6 * 9 * 2).map(|i| (i * 41 % 256) as u8 as i8).collect();
    let zp = [2i8];
    let cw = qgemm_conv_weights {
        data: w.as_ptr(),
        data_len: w.len(),
        layout: QGEMM_FILTER_OHWI,
        out_channels: 6,
        kernel_height: 3,
        kernel_width: 3,
        in_channels: 4,
        groups: 2,
        zero_points: zp.as_ptr(),
        zero_points_len: 1,
        element: QGEMM_WEIGHTS_I8,
    };
    let mut packed = ptr::null_mut();
    // SAFETY: live buffers of the lengths given.
    assert_eq!(unsafe { qgemm_packed_conv_weights_new(&cw, &mut packed) }, QGEMM_OK, "{}", last_error());
    let none = qgemm_output_stage { scheme: QGEMM_SCHEME_NONE, bias: ptr::null(), bias_len: 0, ..s.c };
    let mut conv = ptr::null_mut();
    // SAFETY: live handle, params and stage; `conv` is writable.
    let status = unsafe { qgemm_conv2d_op_new(packed, &params, 7, false, &none, QGEMM_OUTPUT_I32, 1, &mut conv) };
    assert_eq!(status, QGEMM_OK, "{}", last_error());
    let mut workspace = ptr::null_mut();
    // SAFETY: `workspace` is writable.
    assert_eq!(unsafe { qgemm_workspace_new(&mut workspace) }, QGEMM_OK);
    for (batch, h, wd) in [(1, 6, 5), (2, 4, 7)] {
        // SAFETY: a live operator used by nothing else.
        assert_eq!(unsafe { qgemm_conv2d_op_reshape(conv, batch, h, wd) }, QGEMM_OK, "{}", last_error());
        let input: Vec<u8> = (0..batch * h * wd * 4).map(|i| (i * 13 % 256) as u8).collect();
        let rows = batch * h * wd;
        let mut out = vec![0i32; rows * 6];
        let c = qgemm_output {
            r#type: QGEMM_OUTPUT_I32,
            data: out.as_mut_ptr().cast(),
            data_len: out.len(),
            rows,
            cols: 6,
            row_stride: 6,
        };
        // SAFETY: live operator, workspace and buffers of the lengths given.
        let status = unsafe { qgemm_conv2d_op_run(conv, input.as_ptr(), input.len(), &c, workspace) };
        assert_eq!(status, QGEMM_OK, "{}", last_error());
        let shape = qgemm_conv2d_params { batch, in_height: h, in_width: wd, ..params };
        let problem = reference::Conv2dProblem {
            params: rust_params(&shape),
            input: &input,
            input_zero_point: 7,
            weights: &w,
            weight_zero_point: &Channelwise::PerTensor(2),
        };
        assert_eq!(OutputData::I32(out), reference::conv2d(&problem, &OutputStage::i32(), qgemm::OutputType::I32));
    }
    // A kernel that does not fit: refused, the operator keeps its shape.
    // SAFETY: as above.
    assert_eq!(unsafe { qgemm_conv2d_op_reshape(conv, 1, 0, 0) }, QGEMM_STATUS_CONV_OUTPUT_SIZE);
    // SAFETY: live handles, freed once.
    unsafe {
        qgemm_conv2d_op_free(conv);
        qgemm_packed_conv_weights_free(packed);
        qgemm_workspace_free(workspace);
    }
}

#[test]
fn f32_output_through_c() {
    let p = Problem::random(0xf32c, 7, 45, 19, true);
    let handle = p.packed();
    let scales: Vec<f32> = (0..p.n).map(|j| 1.0 / (300.0 + j as f32)).collect();
    let f32_bias: Vec<f32> = (0..p.n).map(|j| j as f32 * 0.25 - 2.0).collect();
    let s = stage(&p, QGEMM_SCHEME_NONE, false, 0, 0, 0);
    let c_stage = qgemm_output_stage {
        scheme: QGEMM_SCHEME_DEQUANTIZE,
        scales: scales.as_ptr(),
        params_len: p.n,
        f32_bias: f32_bias.as_ptr(),
        f32_bias_len: p.n,
        ..s.c
    };
    let mut out = vec![0f32; p.m * p.n];
    let c = qgemm_output {
        r#type: QGEMM_OUTPUT_F32,
        data: out.as_mut_ptr().cast(),
        data_len: out.len(),
        rows: p.m,
        cols: p.n,
        row_stride: p.n,
    };
    // SAFETY: live handle and buffers of the lengths given.
    let status = unsafe { qgemm_gemm(&p.activations(), handle, &c_stage, &c) };
    assert_eq!(status, QGEMM_OK, "{}", last_error());
    let mut rust = OutputStage::dequantized(qgemm::Dequantize::new(scales.clone()).with_bias(f32_bias.clone()));
    rust.bias = Some(p.bias.clone());
    assert!(OutputData::F32(out) == p.expected(&rust, qgemm::OutputType::F32));
    // A dequantizing stage into u8: refused.
    let mut u8s = vec![0u8; p.m * p.n];
    let c8 = qgemm_output { r#type: QGEMM_OUTPUT_U8, data: u8s.as_mut_ptr().cast(), ..c };
    // SAFETY: as above.
    let status = unsafe { qgemm_gemm(&p.activations(), handle, &c_stage, &c8) };
    assert_eq!(status, QGEMM_STATUS_OUTPUT_TYPE, "{}", last_error());
    // SAFETY: a live handle, freed once.
    unsafe { qgemm_packed_weights_free(handle) };
}

#[test]
fn u8_weights_through_c() {
    // u8 weights w with zero point z give the same bytes as i8 weights w − 128 with
    // zero point z − 128.
    let p = Problem::random(0x08c, 6, 50, 13, true);
    let w_u8: Vec<u8> = p.b_nxk.iter().map(|&x| (x as u8) ^ 0x80).collect();
    let zp_u8: Vec<u8> = p.b_zp.iter().map(|&z| (z as u8) ^ 0x80).collect();
    let desc = qgemm_weights {
        data: w_u8.as_ptr().cast(),
        zero_points: zp_u8.as_ptr().cast(),
        element: QGEMM_WEIGHTS_U8,
        ..p.weights()
    };
    let mut handle = ptr::null_mut();
    // SAFETY: live buffers of the lengths given.
    assert_eq!(unsafe { qgemm_packed_weights_new(&desc, &mut handle) }, QGEMM_OK, "{}", last_error());
    let s = stage(&p, QGEMM_SCHEME_FIXED_POINT, true, 10, 0, 200);
    let (status, got) = run(&p, handle, &s.c, QGEMM_OUTPUT_U8);
    assert_eq!(status, QGEMM_OK);
    assert_eq!(got, laid_out(&p, &p.expected(&s.rust, qgemm::OutputType::U8), QGEMM_OUTPUT_U8));
    let bad = qgemm_weights { element: 7, ..desc };
    let mut none = ptr::null_mut();
    // SAFETY: as above.
    assert_eq!(unsafe { qgemm_packed_weights_new(&bad, &mut none) }, QGEMM_STATUS_INVALID_ENUM);
    // SAFETY: a live handle, freed once.
    unsafe { qgemm_packed_weights_free(handle) };
}

#[test]
fn i8_activations_through_c() {
    // int8_t activations a with zero point z give the same bytes as uint8_t ones
    // a + 128 with zero point z + 128.
    let p = Problem::random(0x58c, 9, 60, 21, true);
    let signed: Vec<u8> = p.a.iter().map(|&x| x ^ 0x80).collect();
    let s = stage(&p, QGEMM_SCHEME_FLOAT, true, 128, 0, 255);
    let handle = p.packed();
    let a = qgemm_activations { data: signed.as_ptr(), zero_point: p.a_zp ^ 0x80, signed: true, ..p.activations() };
    let stride = p.n + 3;
    let mut c8 = vec![0x5a_u8; (p.m - 1) * stride + p.n];
    let c = qgemm_output {
        r#type: QGEMM_OUTPUT_U8,
        data: c8.as_mut_ptr().cast(),
        data_len: c8.len(),
        rows: p.m,
        cols: p.n,
        row_stride: stride,
    };
    // SAFETY: live handle and buffers of the lengths given.
    assert_eq!(unsafe { qgemm_gemm(&a, handle, &s.c, &c) }, QGEMM_OK, "{}", last_error());
    let got: Vec<i64> = c8.into_iter().map(i64::from).collect();
    assert_eq!(got, laid_out(&p, &p.expected(&s.rust, qgemm::OutputType::U8), QGEMM_OUTPUT_U8));
    // SAFETY: a live handle, freed once.
    unsafe { qgemm_packed_weights_free(handle) };
}

#[test]
fn i8_conv_input_through_c() {
    let params = padded_3x3([1, 5, 5, 4], 3, 1);
    let w: Vec<i8> = (0..3 * 9 * 4).map(|i| (i * 37 % 256) as u8 as i8).collect();
    let zp = [0i8];
    let cw = qgemm_conv_weights {
        data: w.as_ptr(),
        data_len: w.len(),
        layout: QGEMM_FILTER_OHWI,
        out_channels: 3,
        kernel_height: 3,
        kernel_width: 3,
        in_channels: 4,
        groups: 1,
        zero_points: zp.as_ptr(),
        zero_points_len: 1,
        element: QGEMM_WEIGHTS_I8,
    };
    let mut packed = ptr::null_mut();
    // SAFETY: live buffers of the lengths given.
    assert_eq!(unsafe { qgemm_packed_conv_weights_new(&cw, &mut packed) }, QGEMM_OK, "{}", last_error());
    let x: Vec<i8> = (0..5 * 5 * 4).map(|i| (i * 59 % 256) as u8 as i8).collect();
    let input = qgemm_conv_input { data: x.as_ptr().cast(), data_len: x.len(), zero_point: (-7i8) as u8, signed: true };
    let stage = qgemm_output_stage {
        bias: ptr::null(),
        bias_len: 0,
        scheme: QGEMM_SCHEME_NONE,
        multipliers: ptr::null(),
        shifts: ptr::null(),
        scales: ptr::null(),
        params_len: 0,
        zero_point: 0,
        min: 0,
        max: 0,
        f32_bias: ptr::null(),
        f32_bias_len: 0,
    };
    let mut out = vec![0i32; 25 * 3];
    let c = qgemm_output {
        r#type: QGEMM_OUTPUT_I32,
        data: out.as_mut_ptr().cast(),
        data_len: out.len(),
        rows: 25,
        cols: 3,
        row_stride: 3,
    };
    // SAFETY: live handle and buffers of the lengths given.
    assert_eq!(unsafe { qgemm_conv2d(&input, packed, &params, &stage, &c) }, QGEMM_OK, "{}", last_error());
    // The u8 form: x + 128 with zero point −7 + 128.
    let shifted: Vec<u8> = x.iter().map(|&v| v as u8 ^ 0x80).collect();
    let problem = reference::Conv2dProblem {
        params: rust_params(&params),
        input: &shifted,
        input_zero_point: 121,
        weights: &w,
        weight_zero_point: &Channelwise::PerTensor(0),
    };
    assert_eq!(OutputData::I32(out), reference::conv2d(&problem, &OutputStage::i32(), qgemm::OutputType::I32));
    // SAFETY: a live handle, freed once.
    unsafe { qgemm_packed_conv_weights_free(packed) };
}

/// A 3×3 convolution, stride 1, padding 1 on every side, of an NHWC input of `shape`.
fn padded_3x3(shape: [usize; 4], out_channels: usize, groups: usize) -> qgemm_conv2d_params {
    let [batch, in_height, in_width, in_channels] = shape;
    qgemm_conv2d_params {
        batch,
        in_height,
        in_width,
        in_channels,
        out_channels,
        kernel_height: 3,
        kernel_width: 3,
        stride_height: 1,
        stride_width: 1,
        dilation_height: 1,
        dilation_width: 1,
        pad_top: 1,
        pad_left: 1,
        pad_bottom: 1,
        pad_right: 1,
        groups,
    }
}

#[test]
fn an_i8_linear_operator_through_c() {
    // int8_t inputs a − 128 with zero point z − 128 equal uint8_t inputs a with z.
    let p = Problem::random(0x1158c, 5, 40, 11, false);
    let handle = p.packed();
    let s = stage(&p, QGEMM_SCHEME_FLOAT, true, 0, -128, 127);
    let mut linear = ptr::null_mut();
    let zp = p.a_zp ^ 0x80;
    // SAFETY: live handle and stage; `linear` is writable.
    let status = unsafe { qgemm_linear_new(handle, zp, true, &s.c, QGEMM_OUTPUT_I8, 1, &mut linear) };
    assert_eq!(status, QGEMM_OK, "{}", last_error());
    let signed: Vec<u8> = p.a.iter().map(|&x| x ^ 0x80).collect();
    let mut out = vec![0i8; p.m * p.n];
    let c = qgemm_output {
        r#type: QGEMM_OUTPUT_I8,
        data: out.as_mut_ptr().cast(),
        data_len: out.len(),
        rows: p.m,
        cols: p.n,
        row_stride: p.n,
    };
    // SAFETY: live operator and buffers of the lengths given.
    let status = unsafe { qgemm_linear_run(linear, signed.as_ptr(), signed.len(), p.m, &c, ptr::null_mut()) };
    assert_eq!(status, QGEMM_OK, "{}", last_error());
    assert_eq!(OutputData::I8(out), p.expected(&s.rust, qgemm::OutputType::I8));
    // SAFETY: live handles, freed once.
    unsafe {
        qgemm_linear_free(linear);
        qgemm_packed_weights_free(handle);
    }
}

#[test]
fn four_bit_weights_through_c() {
    // int4 and uint4 weights, two per byte with each of the N rows of K starting on a
    // byte (odd K: a half-used last byte), give the reference's bytes on the values
    // they unpack to; a zero point outside the format's range is refused.
    for (element, signed) in [(QGEMM_WEIGHTS_INT4, true), (QGEMM_WEIGHTS_UINT4, false)] {
        let mut p = Problem::random(0x4b17 + element as u64, 5, 37, 19, true);
        let nibble = |b: i8| if signed { b >> 4 } else { ((b as u8) >> 4) as i8 };
        p.b_nxk = p.b_nxk.iter().map(|&b| nibble(b)).collect();
        p.b_zp = p.b_zp.iter().map(|&z| nibble(z)).collect();
        let bytes: Vec<u8> = p
            .b_nxk
            .chunks_exact(p.k)
            .flat_map(|row| row.chunks(2).map(|v| (v[0] as u8 & 15) | v.get(1).map_or(0xa0, |&h| (h as u8 & 15) << 4)))
            .collect();
        let desc = qgemm_weights { data: bytes.as_ptr().cast(), data_len: bytes.len(), element, ..p.weights() };
        let mut handle = ptr::null_mut();
        // SAFETY: live buffers of the lengths given.
        assert_eq!(unsafe { qgemm_packed_weights_new(&desc, &mut handle) }, QGEMM_OK, "{}", last_error());
        let s = stage(&p, QGEMM_SCHEME_FLOAT, true, 128, 0, 255);
        let (status, got) = run(&p, handle, &s.c, QGEMM_OUTPUT_U8);
        assert_eq!(status, QGEMM_OK);
        assert_eq!(got, laid_out(&p, &p.expected(&s.rust, qgemm::OutputType::U8), QGEMM_OUTPUT_U8));
        // SAFETY: a live handle, freed once.
        unsafe { qgemm_packed_weights_free(handle) };
        let mut none = ptr::null_mut();
        let short = qgemm_weights { data_len: bytes.len() - 1, ..desc };
        // SAFETY: live buffers of (at least) the lengths given.
        assert_eq!(unsafe { qgemm_packed_weights_new(&short, &mut none) }, QGEMM_STATUS_BUFFER_LENGTH);
        let zp = [16i8];
        let bad = qgemm_weights { zero_points: zp.as_ptr(), zero_points_len: 1, ..desc };
        // SAFETY: as above.
        assert_eq!(unsafe { qgemm_packed_weights_new(&bad, &mut none) }, QGEMM_STATUS_ZERO_POINT, "{}", last_error());
        assert!(none.is_null());
    }
    // Conv: OC = 3 rows of 3·3·5 = 45 values, 23 bytes each.
    let w: Vec<u8> = (0..3 * 23).map(|i| (i * 73 % 256) as u8).collect();
    let zp = [2i8];
    let cw = qgemm_conv_weights {
        data: w.as_ptr().cast(),
        data_len: w.len(),
        layout: QGEMM_FILTER_OHWI,
        out_channels: 3,
        kernel_height: 3,
        kernel_width: 3,
        in_channels: 5,
        groups: 1,
        zero_points: zp.as_ptr(),
        zero_points_len: 1,
        element: QGEMM_WEIGHTS_UINT4,
    };
    let mut packed = ptr::null_mut();
    // SAFETY: live buffers of the lengths given.
    assert_eq!(unsafe { qgemm_packed_conv_weights_new(&cw, &mut packed) }, QGEMM_OK, "{}", last_error());
    let rust = qgemm::PackedConvWeights::new(
        qgemm::NibbleConvWeights::new(&w, qgemm::NibbleFormat::UInt4, &Conv2dParams::new([1, 1, 1, 5], 3, [3, 3]))
            .with_zero_point(2),
    )
    .unwrap();
    // The same packing: saved, the handle's and the Rust API's are the same bytes.
    let mut len = 0usize;
    // SAFETY: a live handle; a null buffer asks for the length.
    assert_eq!(unsafe { qgemm_packed_conv_weights_save(packed, ptr::null_mut(), 0, &mut len) }, QGEMM_OK);
    let mut saved = vec![0u8; len];
    // SAFETY: a live handle and a buffer of `len` bytes.
    assert_eq!(unsafe { qgemm_packed_conv_weights_save(packed, saved.as_mut_ptr(), len, &mut len) }, QGEMM_OK);
    assert_eq!(saved, rust.to_bytes());
    // SAFETY: a live handle, freed once.
    unsafe { qgemm_packed_conv_weights_free(packed) };
}
