//! A quantized linear layer from f32 data, as an engine imports one from ONNX or
//! PyTorch: per-channel symmetric int8 weights (N×K), u8 activations with a zero
//! point, an f32 bias quantized to i32, and one Float scale per output channel
//! (`a_scale · w_scale[n] / y_scale`), ReLU fused. Checks qgemm's bytes against the
//! reference and reports how far the dequantized result is from the f32 layer; then
//! saves the packed weights, loads them back and runs them as a `qgemm::Linear`.
//!
//! `cargo run --release -p qgemm --example linear`

use qgemm::{Activations, Channelwise, Options, OutputMatrix, OutputStage, PackedWeights, Weights, Workspace};

fn main() -> qgemm::Result<()> {
    let (m, k, n) = (16, 384, 96);
    // The f32 layer: activations in [0, 6) (after a ReLU6), weights and bias small.
    let x: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 1000) as f32 / 1000.0) * 6.0).collect();
    let w: Vec<f32> =
        (0..n * k).map(|i| ((i * 53 % 997) as f32 / 997.0 - 0.5) * 0.2 * (1.0 + (i / k) as f32 / n as f32)).collect();
    let bias: Vec<f32> = (0..n).map(|j| (j as f32 - 48.0) * 0.01).collect();

    // Quantize: u8 activations (scale 6/255, zero point 0), int8 weights per channel.
    let (a_scale, a_zp) = (6.0f32 / 255.0, 0u8);
    let a: Vec<u8> = x.iter().map(|&v| (v / a_scale).round().clamp(0.0, 255.0) as u8).collect();
    let w_scales: Vec<f32> = w.chunks(k).map(|row| row.iter().fold(0.0f32, |mx, v| mx.max(v.abs())) / 127.0).collect();
    let wq: Vec<i8> =
        w.chunks(k).zip(&w_scales).flat_map(|(row, &s)| row.iter().map(move |&v| (v / s).round() as i8)).collect();
    let bias_q = qgemm::quantize_biases(&bias, a_scale, &w_scales)?;

    // The f32 result, to choose the output scale: y in [0, max] after ReLU.
    let y_f32: Vec<f32> = (0..m * n)
        .map(|i| {
            let (r, j) = (i / n, i % n);
            let dot: f32 = (0..k).map(|kk| x[r * k + kk] * w[j * k + kk]).sum();
            (dot + bias[j]).max(0.0)
        })
        .collect();
    let y_scale = y_f32.iter().fold(0.0f32, |mx, &v| mx.max(v)) / 255.0;

    let zero_point = Channelwise::PerTensor(0);
    let packed = PackedWeights::new(Weights::nxk(&wq, n, k).with_zero_point(zero_point.clone()))?;
    // One Float scale per channel, `a_scale · w_scales[n] / y_scale` as ONNX Runtime
    // rounds it; output zero point 0, clamp [0, 255]: a fused ReLU.
    let requantize = qgemm::onnx_requantize(a_scale, &w_scales, y_scale, 0u8)?;
    let stage = OutputStage::new(Some(bias_q), Some(requantize));
    let mut y = vec![0u8; m * n];
    let mut workspace = Workspace::new();
    let acts = Activations::new(&a, m, k, a_zp);
    let options = Options::new().with_threads(2);
    qgemm::gemm_in(&acts, &packed, &stage, OutputMatrix::u8(&mut y, m, n), &options, &mut workspace)?;

    // The same layer as an engine keeps it: the weights saved with the model and loaded
    // back, inside a `Linear` operator created once and run with the workspace.
    let saved = packed.to_bytes();
    let loaded = PackedWeights::from_bytes(&saved)?;
    let linear = qgemm::Linear::new(loaded, a_zp, stage.clone(), qgemm::OutputType::U8)?.with_options(options)?;
    let mut y_op = vec![0u8; m * n];
    linear.run(&a, m, OutputMatrix::u8(&mut y_op, m, n), &mut workspace)?;
    assert!(y_op == y, "the operator on loaded weights differs from the call");

    // The reference's bytes.
    let problem = qgemm::reference::GemmProblem {
        m,
        n,
        k,
        a: &a,
        a_row_stride: k,
        a_zero_point: a_zp,
        b: &wq,
        b_layout: qgemm::reference::WeightLayout::NxK,
        b_zero_point: &zero_point,
    };
    let want = qgemm::reference::gemm(&problem, &stage, qgemm::reference::OutputType::U8);
    assert!(want == qgemm::reference::OutputData::U8(y.clone()), "qgemm differs from the reference");

    let max_err = y.iter().zip(&y_f32).map(|(&q, &f)| (q as f32 * y_scale - f).abs()).fold(0.0f32, f32::max);
    println!(
        "linear {m}x{k} -> {n} on {} ({}): equal to the reference byte for byte; \
         dequantized output within {max_err:.4} of the f32 layer (output step {y_scale:.4}); \
         the weights saved ({} bytes), loaded and run as a qgemm::Linear: the same bytes",
        packed.isa(),
        packed.kernel_info().name,
        saved.len()
    );
    Ok(())
}
