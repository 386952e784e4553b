//! A small convolutional network, as a MobileNet block runs it: a 3×3 convolution
//! (3 → 16 channels, stride 2, padding 1), a 3×3 depthwise convolution (16 channels,
//! padding 1) and a 1×1 convolution (16 → 8), each with a per-channel Float scale,
//! bias and ReLU fused, u8 NHWC between layers, on 2 threads with one shared
//! `Workspace`. Each layer is checked against the reference byte for byte.
//!
//! `cargo run --release -p qgemm --example conv_net`

use qgemm::reference::{self, Conv2dProblem, OutputData, OutputType};
use qgemm::{
    Channelwise, Conv2dParams, ConvInput, ConvWeights, Options, OutputMatrix, OutputStage, PackedConvWeights,
    Requantization, Requantize, Workspace,
};

/// One layer: weights (OHWI), shape, bias and scales made up from the layer's index.
struct Layer {
    params: Conv2dParams,
    weights: Vec<i8>,
    packed: PackedConvWeights,
    stage: OutputStage,
}

impl Layer {
    fn new(seed: usize, params: Conv2dParams) -> qgemm::Result<Layer> {
        let cg = params.in_channels / params.groups;
        let len = params.out_channels * params.kernel_height * params.kernel_width * cg;
        let weights: Vec<i8> = (0..len).map(|i| ((i * 29 + seed * 7) % 255) as i8).collect();
        let zero_point = Channelwise::PerTensor(0);
        let packed = PackedConvWeights::new(ConvWeights::new(&weights, &params).with_zero_point(zero_point.clone()))?;
        let taps = (params.kernel_height * params.kernel_width * cg) as f32;
        let scales = (0..params.out_channels).map(|j| 1.0 / (taps * (60.0 + j as f32))).collect();
        let stage = OutputStage::new(
            Some((0..params.out_channels).map(|j| (j as i32 - 4) * 50).collect()),
            Some(Requantize::from_i32(Requantization::Float { scale: Channelwise::PerChannel(scales) }, 0, 0, 255)),
        );
        Ok(Layer { params, weights, packed, stage })
    }

    /// Runs the layer on `input`, checks it against the reference, returns its output.
    fn run(&self, input: &[u8], workspace: &mut Workspace) -> qgemm::Result<Vec<u8>> {
        let p = &self.params;
        let (oh, ow) = out_size(p);
        let (rows, cols) = (p.batch * oh * ow, p.out_channels);
        let mut out = vec![0u8; rows * cols];
        let conv_input = ConvInput::new(input, 0);
        let options = Options::new().with_threads(2);
        qgemm::conv2d_in(
            &conv_input,
            &self.packed,
            p,
            &self.stage,
            OutputMatrix::u8(&mut out, rows, cols),
            &options,
            workspace,
        )?;
        let zero_point = Channelwise::PerTensor(0);
        let problem = Conv2dProblem {
            params: *p,
            input,
            input_zero_point: 0,
            weights: &self.weights,
            weight_zero_point: &zero_point,
        };
        let want = reference::conv2d(&problem, &self.stage, OutputType::U8);
        assert!(want == OutputData::U8(out.clone()), "layer differs from the reference");
        Ok(out)
    }
}

/// The output's height and width (the shapes here are valid: `conv2d` checks them).
fn out_size(p: &Conv2dParams) -> (usize, usize) {
    (p.out_height().expect("a valid shape"), p.out_width().expect("a valid shape"))
}

fn main() -> qgemm::Result<()> {
    let (h, w) = (32, 32);
    let image: Vec<u8> = (0..h * w * 3).map(|i| (i * 11 % 256) as u8).collect();
    let conv = Layer::new(1, Conv2dParams::new([1, h, w, 3], 16, [3, 3]).with_stride(2, 2).with_padding(1, 1, 1, 1))?;
    let (h2, w2) = out_size(&conv.params);
    let depthwise =
        Layer::new(2, Conv2dParams::new([1, h2, w2, 16], 16, [3, 3]).with_padding(1, 1, 1, 1).with_groups(16))?;
    let pointwise = Layer::new(3, Conv2dParams::new([1, h2, w2, 16], 8, [1, 1]))?;

    let mut workspace = Workspace::new();
    let mut x = image;
    for (name, layer) in [("3x3", &conv), ("depthwise 3x3", &depthwise), ("1x1", &pointwise)] {
        x = layer.run(&x, &mut workspace)?;
        let nonzero = x.iter().filter(|&&v| v > 0).count();
        println!(
            "{name:>14}: {:?} on {} ({:?}), {} outputs, {nonzero} above zero, equal to the reference",
            (out_size(&layer.params), layer.params.out_channels),
            layer.packed.isa(),
            layer.packed.path(&layer.params)?,
            x.len(),
        );
    }
    println!("workspace after the three layers: {} bytes", workspace.heap_size());
    Ok(())
}
