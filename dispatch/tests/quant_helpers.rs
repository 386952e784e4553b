//! The slice helpers that build a whole `Requantize` and a bias vector from the float
//! parameters engines hold (`onnx_requantize`, `tflite_requantize`, `quantize_biases`)
//! against the scalar helpers applied one channel at a time, per tensor and per
//! channel, and their errors, which name the offending element.

use qgemm::{Channelwise, ErrorKind, FixedPointParams, Requantization, Requantize};

const W: [f32; 4] = [0.02, 0.0031, 0.5, 1.0e-4];

#[test]
fn onnx_scales_per_channel_and_per_tensor() {
    let r = qgemm::onnx_requantize(0.05, &W, 0.07, 3u8).unwrap();
    let want: Vec<f32> = W.iter().map(|&w| qgemm::onnx_float_scale(0.05, w, 0.07)).collect();
    let expected = Requantize::from_i32(Requantization::Float { scale: Channelwise::PerChannel(want) }, 3, 0, 255);
    assert_eq!(r, expected);
    let r = qgemm::onnx_requantize(0.05, &W[..1], 0.07, 3u8).unwrap().with_relu();
    let scale = Channelwise::PerTensor(qgemm::onnx_float_scale(0.05, W[0], 0.07));
    assert_eq!(r, Requantize::from_i32(Requantization::Float { scale }, 3, 3, 255));
}

#[test]
fn tflite_multipliers_per_channel_and_per_tensor() {
    let r = qgemm::tflite_requantize(0.05, &W, 0.07, -5i8).unwrap();
    let pairs: Vec<(i32, i32)> =
        W.iter().map(|&w| qgemm::quantize_multiplier(qgemm::tflite_real_multiplier(0.05, w, 0.07)).unwrap()).collect();
    let params = FixedPointParams::new(
        Channelwise::PerChannel(pairs.iter().map(|p| p.0).collect()),
        Channelwise::PerChannel(pairs.iter().map(|p| p.1).collect()),
    );
    assert_eq!(r, Requantize::from_i32(Requantization::FixedPoint(params), -5, -128, 127));
    let r = qgemm::tflite_requantize(0.05, &W[2..3], 0.07, 0i8).unwrap();
    let (m, s) = qgemm::quantize_multiplier(qgemm::tflite_real_multiplier(0.05, W[2], 0.07)).unwrap();
    let params = FixedPointParams::new(Channelwise::PerTensor(m), Channelwise::PerTensor(s));
    assert_eq!(r.scheme, Requantization::FixedPoint(params));
}

#[test]
fn biases_per_channel_and_per_tensor() {
    let bias = [0.5f32, -1.25, 3.0e3, 0.0];
    let got = qgemm::quantize_biases(&bias, 0.05, &W).unwrap();
    let want: Vec<i32> = bias.iter().zip(W).map(|(&b, w)| qgemm::quantize_bias(b, 0.05, w).unwrap()).collect();
    assert_eq!(got, want);
    let got = qgemm::quantize_biases(&bias, 0.05, &W[..1]).unwrap();
    let want: Vec<i32> = bias.iter().map(|&b| qgemm::quantize_bias(b, 0.05, W[0]).unwrap()).collect();
    assert_eq!(got, want);
    assert_eq!(qgemm::quantize_biases(&[], 0.05, &W[..1]).unwrap(), Vec::<i32>::new());
}

#[test]
fn errors_name_the_element() {
    let e = qgemm::onnx_requantize(0.05, &[], 0.07, 0u8).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Dimension, "{e}");
    let e = qgemm::onnx_requantize(0.05, &[0.1, f32::NAN], 0.07, 0u8).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Scale);
    assert!(e.to_string().contains("w_scales[1] = NaN"), "{e}");
    let e = qgemm::onnx_requantize(0.05, &[0.1], 0.0, 0u8).unwrap_err();
    assert!(e.kind() == ErrorKind::Scale && e.to_string().contains("y_scale = 0"), "{e}");
    let e = qgemm::tflite_requantize(1.0, &[0.1, -0.2], 1.0, 0i8).unwrap_err();
    assert!(e.kind() == ErrorKind::Scale && e.to_string().contains("weight_scales[1] = -0.2"), "{e}");
    // A real multiplier of 2^30 or more has no TFLite shift.
    let e = qgemm::tflite_requantize(1.0e10, &[1.0], 1.0, 0i8).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Shift, "{e}");
    let e = qgemm::quantize_biases(&[1.0, 2.0, 3.0], 0.05, &W[..2]).unwrap_err();
    assert!(e.kind() == ErrorKind::Dimension && e.to_string().contains("needs 1 or 3"), "{e}");
    let e = qgemm::quantize_biases(&[1.0, 2.0, f32::INFINITY], 0.05, &W[..1]).unwrap_err();
    assert!(e.kind() == ErrorKind::Scale && e.to_string().contains("bias[2]"), "{e}");
}
