#!/usr/bin/env python3
"""Time other int8 GEMM/conv libraries ("peers") on the problems qgemm benchmarks.

`qgemm-bench --export DIR` writes each benchmark problem (u8 activations, i8
weights, i32 bias, quantisation parameters) and qgemm's reference outputs to
DIR. This script feeds the same bytes to ONNX Runtime, PyTorch's quantized
engines and XNNPACK (through LiteRT, TFLite's runtime), times them (one warm-up run, then at least 3 runs and at least
--min-time seconds; the median is reported) and writes one JSON line per
(peer, problem, thread count).

Every peer's output is also compared element by element with qgemm's
reference, because a speed number is only worth comparing if the peer computes
the same thing. On AVX2-only CPUs ONNX Runtime (MLAS) and FBGEMM multiply
u8 x s8 with vpmaddubsw, which saturates the i16 sum of each pair of
products; on full-range data (u8 0..255, s8 -128..127) they are therefore
*expected* to be wrong in some elements. With 7-bit activations (u8 0..127)
the pair sums cannot saturate, so they should be exact: a nonzero "wrong"
count on 7-bit data means our reference semantics (rounding, zero points,
padding) differ from the peer's, and a warning is printed to stderr.

Peers and what they are compared against (see the manifest's "expected"):
  ort-qlinearmatmul     ONNX QLinearMatMul                 -> u8 (no bias)
  ort-matmulinteger     ONNX MatMulInteger                 -> i32
  ort-qlinearconv       ONNX QLinearConv, NCHW             -> u8_bias
  ort-qlinearconv-nhwc  com.microsoft QLinearConv,
                        channels_last=1 (NHWC)             -> u8_bias
  torch-fbgemm, torch-x86, torch-onednn
                        torch.ops.quantized.linear/conv2d
                        under that quantized engine        -> u8 (no bias: torch
                        takes a float bias and applies it in float)
  xnnpack               LiteRT (TFLite) FULLY_CONNECTED / CONV_2D /
                        DEPTHWISE_CONV_2D, int8 (activations a ^ 0x80),
                        run by the XNNPACK delegate   -> u8_bias (output
                        xored back); skipped where the delegate does not
                        take the node, and for padding other than VALID or
                        TensorFlow's SAME

Layout conversions (NHWC<->NCHW, OHWI->OIHW, NxK->KxN) happen once at set-up
and are not timed; whatever a peer does internally (ORT transposes NCHW input
to NHWC inside QLinearConv, for example) is timed, since a user of that API
pays for it.

Seen with onnxruntime 1.32 / torch 2.15 on a Xeon with AVX-512 VNNI and AMX:
ORT is exact on full-range data there; FBGEMM's depthwise conv still
saturates (up to 142 levels off); oneDNN (torch-x86 and torch-onednn conv, and
torch-onednn linear) is off by one on a few outputs that lie within f32
rounding of a .5 tie, also on 7-bit data: for acc = 24034 the f32 product
acc * scale is 23.499998, which rounds to 23, and oneDNN gives 24, so its f32
arithmetic is not one multiply of the accumulator; and oneDNN's quantized
linear with a nonzero input zero point falls back to its reference kernel
(ref_int8), so torch-onednn GEMMs are very slow (about 0.05 GOPS).
"""

import argparse
import functools
import json
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

# A host without torch still runs the ONNX Runtime peers; the PyTorch rows then say why
# they were skipped (and the other way round, below).
try:
    import torch
    TORCH_MISSING = None
    TORCH_LIBRARY = f"torch {torch.__version__}"
except ImportError as error:
    torch = None
    TORCH_MISSING = f"torch is needed for this peer: {error}"
    TORCH_LIBRARY = "torch (not importable)"

# ONNX Runtime's peers also need the `onnx` package to build their models. A host with
# torch alone (the Xeon test host has no `onnx`) still runs the PyTorch peers; the ONNX
# Runtime rows then say why they were skipped.
try:
    import onnxruntime as ort
    from onnx import helper, numpy_helper
    ONNX_MISSING = None
    ORT_LIBRARY = f"onnxruntime {ort.__version__}"
except ImportError as error:
    ort = helper = numpy_helper = None
    ONNX_MISSING = f"onnxruntime and onnx are needed for this peer: {error}"
    ORT_LIBRARY = "onnxruntime (not importable)"
# XNNPACK runs through LiteRT (TFLite), whose default delegate it is; the models are
# built with the flatbuffer schema that ai-edge-litert ships.
try:
    from importlib.metadata import version as package_version

    import flatbuffers
    from ai_edge_litert import interpreter as litert
    from ai_edge_litert import schema_py_generated as tfl
    LITERT_MISSING = None
    LITERT_LIBRARY = f"ai-edge-litert {package_version('ai-edge-litert')}"
except ImportError as error:
    flatbuffers = litert = tfl = None
    LITERT_MISSING = f"ai-edge-litert and flatbuffers are needed for this peer: {error}"
    LITERT_LIBRARY = "ai-edge-litert (not importable)"
# Opset 21 pairs with IR version 10; pin both so a newer `onnx` package cannot
# produce a model that this onnxruntime refuses to load.
ONNX_OPSET = 21
ONNX_IR_VERSION = 10
MS_DOMAIN = "com.microsoft"

# torch warns (once, on stderr) that quantized tensor creation is deprecated;
# we know, and the peer rows are what matter here.
warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor.*deprecated")


class Skip(Exception):
    """A peer cannot run a problem; the message becomes the row's "skipped"."""


def f32(value):
    """A manifest scale rounded to f32, as the peers store it, as a Python float."""
    return float(np.float32(value))


# --------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------


class Problem:
    """One manifest entry plus loaders for its data files (in manifest layout)."""

    def __init__(self, meta, data_dir):
        self.meta = meta
        self.dir = data_dir

    def __getitem__(self, key):
        return self.meta[key]

    @property
    def op(self):
        return self.meta["op"]

    @property
    def label(self):
        return f"{self.op} {self.meta['shape']}" + (
            "" if self.weights == "i8" else f" ({self.weights} weights)")

    @property
    def weights(self):
        """The weights' type: "i8", or 4-bit "u4" / "i4" (`b` then holds each row of
        K values in ceil(K / 2) bytes, the lower index in the low nibble)."""
        return self.meta.get("weights", "i8")

    def _load(self, file, dtype, shape):
        return np.fromfile(self.dir / file, dtype=dtype).reshape(shape)

    def a(self):
        """u8 activations: [M, K] or NHWC."""
        m = self.meta
        shape = ((m["m"], m["k"]) if self.op == "gemm" else
                 (m["batch"], m["in_height"], m["in_width"], m["in_channels"]))
        return self._load(m["a"], np.uint8, shape)

    def b(self):
        """i8 weights: [N, K] (row n = column n of B) or OHWI."""
        m = self.meta
        shape = ((m["n"], m["k"]) if self.op == "gemm" else
                 (m["out_channels"], m["kernel_height"], m["kernel_width"],
                  m["in_channels"] // m["groups"]))
        return self._load(m["b"], np.int8, shape)

    def bias(self):
        return self._load(self.meta["bias"], "<i4", (-1,))

    def out_shape(self):
        """[M, N] or NHWC [batch, OH, OW, OC]."""
        m = self.meta
        if self.op == "gemm":
            return (m["m"], m["n"])
        return (m["batch"], m["out_height"], m["out_width"], m["out_channels"])

    def expected(self, kind):
        files = self.meta.get("expected", {})
        if kind not in files:
            raise Skip(f"manifest has no expected.{kind} output")
        dtype = "<i4" if kind == "i32" else np.uint8
        return self._load(files[kind], dtype, self.out_shape())


def load_manifest(data_dir):
    manifest = json.loads((data_dir / "manifest.json").read_text())
    if manifest.get("version") != 1:
        sys.exit(f"{data_dir}/manifest.json: unsupported version {manifest.get('version')}")
    problems = [Problem(p, data_dir) for p in manifest["problems"]]
    return manifest.get("data", "unknown"), problems


# --------------------------------------------------------------------------
# What a peer hands back: a timed call and an untimed conversion
# --------------------------------------------------------------------------


@dataclass
class Bench:
    run: Callable[[], object]  # the timed call
    result: Callable[[object], np.ndarray]  # run()'s value -> manifest layout (untimed)
    checked_against: str  # key of the problem's "expected" files; None: timed only


# --------------------------------------------------------------------------
# ONNX Runtime peers
# --------------------------------------------------------------------------


def scalar(name, value, dtype):
    return numpy_helper.from_array(np.array(value, dtype=dtype), name)


def qlinear_initializers(p, weight):
    """The constant inputs shared by QLinearMatMul and QLinearConv (all but x)."""
    return [
        scalar("x_scale", p["a_scale"], np.float32),
        scalar("x_zero_point", p["a_zero_point"], np.uint8),
        numpy_helper.from_array(weight, "w"),
        scalar("w_scale", p["b_scale"], np.float32),
        scalar("w_zero_point", p["b_zero_point"], np.int8),
        scalar("y_scale", p["y_scale"], np.float32),
        scalar("y_zero_point", p["y_zero_point"], np.uint8),
    ]


QLINEAR_INPUTS = ["x", "x_scale", "x_zero_point", "w", "w_scale", "w_zero_point",
                  "y_scale", "y_zero_point"]


def onnx_model(node, x, out, initializers):
    """A one-node model: graph input "x" (shaped like array x), output "y" (like out)."""
    def info(name, array):
        elem = helper.np_dtype_to_tensor_dtype(array.dtype)
        return helper.make_tensor_value_info(name, elem, array.shape)

    graph = helper.make_graph([node], "peer", [info("x", x)], [info("y", out)],
                              initializer=initializers)
    opsets = [helper.make_opsetid("", ONNX_OPSET), helper.make_opsetid(MS_DOMAIN, 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=ONNX_IR_VERSION)


def ort_bench(node, x, initializers, out_shape, out_dtype, threads, checked_against,
              to_manifest=lambda y: y):
    """Build a session and bind x and a preallocated output once, so the timed
    call is the kernel plus ORT's per-run overhead, not numpy allocation."""
    out = np.empty(out_shape, dtype=out_dtype)
    model = onnx_model(node, x, out, initializers)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # ORT would also log a failing run to stderr; the exception text already
    # lands in the row's "skipped", so keep the progress output readable.
    options.log_severity_level = 4
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    binding = session.io_binding()
    binding.bind_ortvalue_input("x", ort.OrtValue.ortvalue_from_numpy(x))
    binding.bind_ortvalue_output("y", ort.OrtValue.ortvalue_from_numpy(out))
    # Read the result back through ORT (a copy) rather than trusting that `out`
    # is where it wrote: a run that fills nothing must not pass the check.
    return Bench(run=lambda: session.run_with_iobinding(binding),
                 result=lambda _: to_manifest(binding.get_outputs()[0].numpy()),
                 checked_against=checked_against)


def ort_qlinearmatmul(p, threads):
    b_kxn = np.ascontiguousarray(p.b().T)
    node = helper.make_node("QLinearMatMul", QLINEAR_INPUTS, ["y"])
    return ort_bench(node, p.a(), qlinear_initializers(p, b_kxn), p.out_shape(),
                     np.uint8, threads, "u8")


def ort_matmulinteger(p, threads):
    b_kxn = np.ascontiguousarray(p.b().T)
    initializers = [numpy_helper.from_array(b_kxn, "w"),
                    scalar("x_zero_point", p["a_zero_point"], np.uint8),
                    scalar("w_zero_point", p["b_zero_point"], np.int8)]
    node = helper.make_node("MatMulInteger", ["x", "w", "x_zero_point", "w_zero_point"], ["y"])
    return ort_bench(node, p.a(), initializers, p.out_shape(), np.int32, threads, "i32")


def conv_node(p, domain="", **extra_attributes):
    """A QLinearConv node; ONNX pads are [top, left, bottom, right] like the manifest's."""
    return helper.make_node(
        "QLinearConv", QLINEAR_INPUTS + ["bias"], ["y"], domain=domain,
        kernel_shape=[p["kernel_height"], p["kernel_width"]], strides=p["stride"],
        pads=p["padding"], dilations=p["dilation"], group=p["groups"], **extra_attributes)


def conv_initializers(p):
    weight_oihw = np.ascontiguousarray(p.b().transpose(0, 3, 1, 2))
    return qlinear_initializers(p, weight_oihw) + [numpy_helper.from_array(p.bias(), "bias")]


def ort_qlinearconv(p, threads):
    x_nchw = np.ascontiguousarray(p.a().transpose(0, 3, 1, 2))
    n, oh, ow, oc = p.out_shape()
    return ort_bench(conv_node(p), x_nchw, conv_initializers(p), (n, oc, oh, ow), np.uint8,
                     threads, "u8_bias", to_manifest=lambda y: y.transpose(0, 2, 3, 1))


def ort_qlinearconv_nhwc(p, threads):
    # channels_last only changes X and Y: the kernel (onnxruntime/core/providers/
    # cpu/quantization/qlinearconv.cc) still reads W as [M, C/group, kH, kW], i.e. OIHW.
    node = conv_node(p, domain=MS_DOMAIN, channels_last=1)
    return ort_bench(node, p.a(), conv_initializers(p), p.out_shape(), np.uint8,
                     threads, "u8_bias")


# --------------------------------------------------------------------------
# PyTorch peers
# --------------------------------------------------------------------------


def quantized(array, scale, zero_point):
    """Wrap integer data as a per-tensor quantized tensor without requantizing it
    (u8 -> quint8, i8 -> qint8), so the peer sees exactly the manifest's bytes."""
    data = torch.from_numpy(np.ascontiguousarray(array))
    return torch._make_per_tensor_quantized_tensor(data, f32(scale), int(zero_point))


def torch_gemm(p):
    x = quantized(p.a(), p["a_scale"], p["a_zero_point"])
    packed = torch.ops.quantized.linear_prepack(
        quantized(p.b(), p["b_scale"], p["b_zero_point"]), None)  # wants [N, K]: as stored
    y_scale, y_zero_point = f32(p["y_scale"]), int(p["y_zero_point"])
    return Bench(run=lambda: torch.ops.quantized.linear(x, packed, y_scale, y_zero_point),
                 result=lambda y: y.int_repr().numpy(),
                 checked_against="u8")


def torch_conv(p):
    top, left, bottom, right = p["padding"]
    if (top, left) != (bottom, right):
        raise Skip(f"asymmetric padding {p['padding']} (torch conv2d pads symmetrically)")
    # A permuted view of NHWC data is an NCHW tensor in channels_last memory format.
    x = quantized(p.a(), p["a_scale"], p["a_zero_point"]).permute(0, 3, 1, 2)
    x = x.contiguous(memory_format=torch.channels_last)
    weight = quantized(p.b().transpose(0, 3, 1, 2), p["b_scale"], p["b_zero_point"])
    packed = torch.ops.quantized.conv2d_prepack(
        weight, None, p["stride"], [top, left], p["dilation"], p["groups"])
    y_scale, y_zero_point = f32(p["y_scale"]), int(p["y_zero_point"])
    return Bench(run=lambda: torch.ops.quantized.conv2d(x, packed, y_scale, y_zero_point),
                 result=lambda y: y.int_repr().permute(0, 2, 3, 1).contiguous().numpy(),
                 checked_against="u8")


def torch_peer(engine, p, threads):
    if TORCH_MISSING:
        raise Skip(TORCH_MISSING)
    if engine not in torch.backends.quantized.supported_engines:
        raise Skip(f"quantized engine {engine} not built into this torch")
    # Prepacked weights are engine-specific, so the engine must be set before
    # prepacking and stay set while timing (nothing else runs in between).
    torch.backends.quantized.engine = engine
    torch.set_num_threads(threads)
    return torch_gemm(p) if p.op == "gemm" else torch_conv(p)


# --------------------------------------------------------------------------
# XNNPACK, through LiteRT's (TFLite's) XNNPACK delegate
# --------------------------------------------------------------------------
#
# TFLite's int8 ops take s8 activations, so the model's input is a ^ 0x80 with zero
# point a_zp - 128 (the same a - a_zp), and its s8 output is y ^ 0x80 with zero point
# y_zp - 128. Weights are s8 with one scale per output channel (all b_scale) and zero
# point 0, as TFLite requires; the bias is i32 with scale a_scale * b_scale, added to
# the accumulator. XNNPACK requantizes in f32 (scale a_scale * b_scale / y_scale, one
# multiply, round half to even), which is the reference's Float rounding.


def tflite_padding(p):
    """SAME or VALID for the manifest's padding, or a Skip: TFLite has no other."""
    pads = list(p["padding"])
    if pads == [0, 0, 0, 0]:
        return tfl.Padding.VALID
    before, after = [], []  # TensorFlow's SAME: out = ceil(in / stride), the odd pad after
    for i, axis in enumerate(("height", "width")):
        size, stride = p[f"in_{axis}"], p["stride"][i]
        extent = (p[f"kernel_{axis}"] - 1) * p["dilation"][i] + 1
        total = max((-(-size // stride) - 1) * stride + extent - size, 0)
        before.append(total // 2)
        after.append(total - total // 2)
    same = before + after  # [top, left, bottom, right]
    if pads == same:
        return tfl.Padding.SAME
    raise Skip(f"padding {pads} (top, left, bottom, right) is neither VALID nor TFLite's SAME "
               f"({same} here); TFLite has no other")


def tflite_model(op, options_type, options, x, weight, w_axis, bias, out_shape, p):
    """A one-operator int8 model: input x (s8), constant weight (s8, per-channel scales
    along w_axis) and bias (i32), output y (s8); returns the flatbuffer."""
    a_scale, b_scale = f32(p["a_scale"]), f32(p["b_scale"])
    channels = weight.shape[w_axis]

    def quantization(scales, zero_point, axis=0):
        return tfl.QuantizationParametersT(scale=list(scales), zeroPoint=[zero_point] * len(scales),
                                           quantizedDimension=axis)

    def tensor(name, shape, dtype, buffer, quant):
        return tfl.TensorT(name=name, shape=list(shape), type=dtype, buffer=buffer, quantization=quant)

    tensors = [
        tensor("x", x.shape, tfl.TensorType.INT8, 0,
               quantization([a_scale], int(p["a_zero_point"]) - 128)),
        tensor("w", weight.shape, tfl.TensorType.INT8, 1,
               quantization([b_scale] * channels, int(p["b_zero_point"]), w_axis)),
        tensor("bias", bias.shape, tfl.TensorType.INT32, 2,
               quantization([f32(a_scale * b_scale)] * channels, 0)),
        tensor("y", out_shape, tfl.TensorType.INT8, 0,
               quantization([f32(p["y_scale"])], int(p["y_zero_point"]) - 128)),
    ]
    buffers = [tfl.BufferT(), tfl.BufferT(), tfl.BufferT()]
    buffers[1].data = np.ascontiguousarray(weight).view(np.uint8).reshape(-1)
    buffers[2].data = np.ascontiguousarray(bias, dtype="<i4").view(np.uint8).reshape(-1)
    operator = tfl.OperatorT(opcodeIndex=0, inputs=[0, 1, 2], outputs=[3],
                             builtinOptionsType=options_type, builtinOptions=options)
    subgraph = tfl.SubGraphT(tensors=tensors, inputs=[0], outputs=[3], operators=[operator],
                             name="peer")
    code = tfl.OperatorCodeT(deprecatedBuiltinCode=op, builtinCode=op, version=1)
    model = tfl.ModelT(version=3, operatorCodes=[code], subgraphs=[subgraph], buffers=buffers,
                       description="qgemm peer")
    builder = flatbuffers.Builder(weight.nbytes + bias.nbytes + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def xnnpack(p, threads):
    if int(p["b_zero_point"]) != 0:
        raise Skip(f"weight zero point {p['b_zero_point']} (TFLite's int8 weights have 0)")
    x = (p.a() ^ 0x80).view(np.int8)
    bias = p.bias()
    if p.op == "gemm":
        weight = p.b()  # [N, K]: TFLite's FULLY_CONNECTED weights, as stored
        op, w_axis = tfl.BuiltinOperator.FULLY_CONNECTED, 0
        options_type = tfl.BuiltinOptions.FullyConnectedOptions
        options = tfl.FullyConnectedOptionsT()
    else:
        padding = tflite_padding(p)
        (stride_h, stride_w), (dilation_h, dilation_w) = p["stride"], p["dilation"]
        groups, channels = p["groups"], p["in_channels"]
        if groups == channels:
            # Depthwise: OHWI [C·m, KH, KW, 1] -> [1, KH, KW, C·m]; output channel
            # c·m + j reads input channel c in both.
            weight = np.ascontiguousarray(p.b().transpose(3, 1, 2, 0))
            op, w_axis = tfl.BuiltinOperator.DEPTHWISE_CONV_2D, 3
            options_type = tfl.BuiltinOptions.DepthwiseConv2DOptions
            options = tfl.DepthwiseConv2DOptionsT()
            options.depthMultiplier = p["out_channels"] // channels
        else:
            weight = p.b()  # OHWI, with C/groups input channels: grouped when groups > 1
            op, w_axis = tfl.BuiltinOperator.CONV_2D, 0
            options_type = tfl.BuiltinOptions.Conv2DOptions
            options = tfl.Conv2DOptionsT()
        options.padding = padding
        options.strideH, options.strideW = stride_h, stride_w
        options.dilationHFactor, options.dilationWFactor = dilation_h, dilation_w
    model = tflite_model(op, options_type, options, x, weight, w_axis, bias, p.out_shape(), p)
    interpreter = litert.Interpreter(model_content=model, num_threads=threads)
    interpreter.allocate_tensors()  # applies the default delegate, XNNPACK
    # A delegated model lists its one operator and the DELEGATE node that replaced it.
    ops = [node["op_name"] for node in interpreter._get_ops_details()]
    if "DELEGATE" not in ops:
        raise Skip(f"the XNNPACK delegate did not take the operator (nodes: {', '.join(ops)})")
    x_index = interpreter.get_input_details()[0]["index"]
    y_index = interpreter.get_output_details()[0]["index"]
    interpreter.set_tensor(x_index, x)  # stays in place across invokes
    # Poison the output, so that a first run (the one checked) that writes nothing fails.
    interpreter.set_tensor(y_index, np.full(p.out_shape(), 0x5a, np.int8))
    return Bench(run=interpreter.invoke,
                 result=lambda _: interpreter.get_tensor(y_index).view(np.uint8) ^ 0x80,
                 checked_against="u8_bias")


def needs_litert(setup):
    """`setup`, or a Skip with the reason where ai-edge-litert or flatbuffers is missing."""
    @functools.wraps(setup)
    def checked(p, threads):
        if LITERT_MISSING:
            raise Skip(LITERT_MISSING)
        return setup(p, threads)
    return checked


# --------------------------------------------------------------------------
# The peer table
# --------------------------------------------------------------------------


def ort_matmulnbits(p, threads):
    """ONNX Runtime's 4-bit weight-only MatMul on the problem's uint4 weights: one
    block of K per column (one scale each), the problem's zero point, accuracy level 4
    (MLAS quantizes A to int8 in blocks and computes in int8). Its output is float, so
    it is timed only: ORT's own quantization of A makes its numbers differ by design."""
    m = p.meta
    if p.weights != "u4":
        raise Skip("MatMulNBits takes uint4 weights")
    k, n = m["k"], m["n"]
    if k % 2 or k < 16 or k & (k - 1):
        raise Skip(f"MatMulNBits' block size must be a power of two >= 16; K = {k}")
    b = p._load(m["b"], np.uint8, (n, 1, k // 2))
    initializers = [
        numpy_helper.from_array(b, "w"),
        numpy_helper.from_array(np.full((n,), f32(m["a_scale"]), dtype=np.float32), "scales"),
        numpy_helper.from_array(np.full((n,), m["b_zero_point"] & 15, dtype=np.uint8), "zero_points"),
    ]
    node = helper.make_node("MatMulNBits", ["x", "w", "scales", "zero_points"], ["y"],
                            domain=MS_DOMAIN, K=k, N=n, bits=4, block_size=k, accuracy_level=4)
    x = p.a().astype(np.float32) - np.float32(m["a_zero_point"])
    return ort_bench(node, x, initializers, p.out_shape(), np.float32, threads, None)


@dataclass(frozen=True)
class Peer:
    id: str
    name: str
    library: str
    ops: tuple  # problem ops it can run
    setup: Callable[[Problem, int], Bench]
    weights: tuple = ("i8",)  # weight types it runs ("i8", "u4", "i4")


def needs_onnx(setup):
    """`setup`, or a Skip with the reason where onnxruntime or onnx is missing."""
    @functools.wraps(setup)
    def checked(p, threads):
        if ONNX_MISSING:
            raise Skip(ONNX_MISSING)
        return setup(p, threads)
    return checked


PEERS = [
    Peer("ort-matmulnbits", "ONNX Runtime com.microsoft MatMulNBits (uint4, block = K, "
         "accuracy level 4)", ORT_LIBRARY, ("gemm",), needs_onnx(ort_matmulnbits), ("u4",)),
    Peer("ort-qlinearmatmul", "ONNX Runtime QLinearMatMul", ORT_LIBRARY, ("gemm",),
         needs_onnx(ort_qlinearmatmul)),
    Peer("ort-matmulinteger", "ONNX Runtime MatMulInteger", ORT_LIBRARY, ("gemm",),
         needs_onnx(ort_matmulinteger)),
    Peer("ort-qlinearconv", "ONNX Runtime QLinearConv (NCHW)", ORT_LIBRARY, ("conv",),
         needs_onnx(ort_qlinearconv)),
    Peer("ort-qlinearconv-nhwc", "ONNX Runtime com.microsoft QLinearConv (channels_last)",
         ORT_LIBRARY, ("conv",), needs_onnx(ort_qlinearconv_nhwc)),
    Peer("xnnpack", "XNNPACK (LiteRT's XNNPACK delegate)", LITERT_LIBRARY, ("gemm", "conv"),
         needs_litert(xnnpack)),
] + [
    Peer(f"torch-{engine}", f"PyTorch quantized ({engine})", TORCH_LIBRARY, ("gemm", "conv"),
         functools.partial(torch_peer, engine))
    for engine in ("fbgemm", "x86", "onednn")
]
PEER_IDS = [peer.id for peer in PEERS]


# --------------------------------------------------------------------------
# Timing, checking, reporting
# --------------------------------------------------------------------------


def measure(bench, min_time):
    """Warm up once (that run's output is the one checked), then time runs until
    at least 3 runs and min_time seconds. Returns (output, median seconds, runs)."""
    output = bench.result(bench.run())
    times = []
    start = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        bench.run()
        times.append(time.perf_counter() - t0)
    return output, statistics.median(times), len(times)


def compare(actual, expected):
    """(elements that differ, element count, max |actual - expected|)."""
    if actual.shape != expected.shape:
        raise ValueError(f"output shape {actual.shape}, expected {expected.shape}")
    diff = np.abs(actual.astype(np.int64) - expected.astype(np.int64))
    return int(np.count_nonzero(diff)), int(diff.size), int(diff.max(initial=0))


def one_line(error):
    text = " ".join(str(error).split()) or type(error).__name__
    return text if isinstance(error, Skip) else f"{type(error).__name__}: {text}"


def base_row(peer, problem, threads, data_kind):
    return {"peer": peer.id, "name": peer.name, "library": peer.library, "op": problem.op,
            "shape": problem["shape"], "threads": threads, "data": data_kind,
            "weights": problem.weights}


def run_job(peer, problem, threads, data_kind, min_time):
    """One output row; any failure becomes a "skipped" row instead of an exception."""
    row = base_row(peer, problem, threads, data_kind)
    try:
        bench = peer.setup(problem, threads)
        output, seconds, runs = measure(bench, min_time)
        if bench.checked_against is None:
            # Timed only: float output from activations the peer quantized itself.
            return {**row, "ms": seconds * 1e3, "gops": problem["ops"] / seconds / 1e9,
                    "runs": runs, "unchecked": True, "wrong": 0, "total": int(output.size),
                    "max_abs_diff": 0}
        wrong, total, max_abs_diff = compare(output, problem.expected(bench.checked_against))
    except Exception as error:  # one peer failing one problem must not stop the run
        return {**row, "skipped": one_line(error)}
    return {**row, "ms": seconds * 1e3, "gops": problem["ops"] / seconds / 1e9, "runs": runs,
            "checked_against": bench.checked_against, "wrong": wrong, "total": total,
            "max_abs_diff": max_abs_diff}


def describe(row):
    if "skipped" in row:
        return f"    skipped: {row['skipped']}"
    if row.get("unchecked"):
        return (f"    {row['ms']:.4f} ms, {row['gops']:.2f} GOP/s, {row['runs']} runs, "
                "timed only (float output, not compared)")
    return (f"    {row['ms']:.4f} ms, {row['gops']:.2f} GOP/s, {row['runs']} runs, "
            f"wrong {row['wrong']}/{row['total']} vs {row['checked_against']} "
            f"(max diff {row['max_abs_diff']})")


def warn_if_inexact(row):
    # Saturation cannot happen on 7-bit data, so a mismatch there is a semantic one.
    if row["data"] == "7bit" and row.get("wrong"):
        print(f"WARNING: {row['peer']} differs from qgemm's reference in {row['wrong']} "
              f"elements on 7-bit data ({row['op']} {row['shape']}): the reference "
              "semantics and the peer's disagree", file=sys.stderr)


def too_slow(rates, peer, problem, threads, max_run_seconds):
    """Why a run would take too long, judged by the slowest rate this peer showed on
    an earlier problem of the same op and thread count; None if it should run.
    (torch-onednn's GEMM with an input zero point runs oneDNN's reference kernel at
    well under 1 GOPS: a 2048³ GEMM would take minutes per run.)"""
    seen = rates.get((peer.id, problem.op, threads))
    if seen is None:
        return None
    gops, shape = seen
    seconds = problem["ops"] / (gops * 1e9)
    if seconds <= max_run_seconds:
        return None
    return (f"estimated {seconds:.0f} s per run: it ran at {gops:.2f} GOPS on {shape} "
            f"(--max-run-seconds {max_run_seconds:g})")


def jobs(problems, peers, thread_counts):
    return [(peer, problem, threads) for problem in problems for peer in peers
            if problem.op in peer.ops and problem.weights in peer.weights
            for threads in thread_counts]


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def comma_list(convert):
    def parse(text):
        try:
            return [convert(item) for item in text.split(",") if item]
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return parse


def peer_id(text):
    if text not in PEER_IDS:
        raise ValueError(f"unknown peer {text!r} (known: {', '.join(PEER_IDS)})")
    return text


def thread_count(text):
    if int(text) < 1:
        raise ValueError(f"thread count must be >= 1, got {text}")
    return int(text)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Output: one JSON object per line and (peer, problem, threads):\n"
               "  peer, name, library, op, shape, threads, data, ms (median), gops,\n"
               "  runs, checked_against (u8 | u8_bias | i32), wrong (elements differing\n"
               "  from qgemm's reference), total, max_abs_diff;\n"
               "or, when the peer cannot run the problem, the first seven and\n"
               "  skipped (the reason).\n\n"
               f"Peers: {', '.join(PEER_IDS)}.\n\n" + __doc__.split("\n\n", 1)[1])
    parser.add_argument("--data-dir", type=Path, required=True,
                        help="directory written by `qgemm-bench --export DIR` "
                             "(holds manifest.json)")
    parser.add_argument("--threads", type=comma_list(thread_count), default=[1],
                        help="comma-separated thread counts, e.g. 1,2 (default: 1)")
    parser.add_argument("--min-time", type=float, default=0.5,
                        help="seconds to keep timing each case, after at least 3 runs "
                             "(default: 0.5)")
    parser.add_argument("--peers", type=comma_list(peer_id), default=PEER_IDS,
                        help="comma-separated peer ids to run (default: all)")
    parser.add_argument("--max-run-seconds", type=float, default=2.0,
                        help="skip a case whose single run would take longer than this, "
                             "estimated from the peer's slowest earlier rate (default: 2)")
    parser.add_argument("--out", type=Path,
                        help="write the JSON lines here instead of stdout")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    data_kind, problems = load_manifest(args.data_dir)
    peers = [peer for peer in PEERS if peer.id in args.peers]
    todo = jobs(problems, peers, args.threads)
    out = args.out.open("w") if args.out else sys.stdout
    rates = {}  # (peer id, op, threads) -> (slowest GOPS so far, on which shape)
    try:
        for index, (peer, problem, threads) in enumerate(todo, 1):
            print(f"[{index}/{len(todo)}] {peer.id} {problem.label}, {threads} thread(s)",
                  file=sys.stderr, flush=True)
            reason = too_slow(rates, peer, problem, threads, args.max_run_seconds)
            if reason:
                row = {**base_row(peer, problem, threads, data_kind), "skipped": reason}
            else:
                row = run_job(peer, problem, threads, data_kind, args.min_time)
            if "gops" in row:
                key = (peer.id, problem.op, threads)
                if key not in rates or row["gops"] < rates[key][0]:
                    rates[key] = (row["gops"], problem["shape"])
            print(describe(row), file=sys.stderr, flush=True)
            warn_if_inexact(row)
            out.write(json.dumps(row) + "\n")
            out.flush()  # keep finished rows if a later peer crashes the process
    finally:
        if out is not sys.stdout:
            out.close()


if __name__ == "__main__":
    main()
