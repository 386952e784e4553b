#!/usr/bin/env python3
"""Checks the output-stage formulas of issue 23 against the torch installed here, on
this CPU: each PyTorch quantized engine (fbgemm, x86, qnnpack, onednn) runs a linear
layer with a float bias on adversarial data, and each formula, written here in exact
arithmetic, predicts its bytes. Prints, per engine and case, the outputs compared and
the mismatches of every formula, so that the engine's own formula shows 0 and the
others show how the data tells them apart.

    target/peers/venv/bin/python reference/tests/data/probe_pytorch_stages.py [--seed S]

The first step of issue 23: the committed known-answer generator grows from it.
Arithmetic: every f32 operation is computed exactly (fractions) and rounded once to
f32, ties to even, so no double rounding hides a near-tie; `fma` rounds once.
"""

import argparse
import platform
import struct
from fractions import Fraction

import numpy as np
import torch

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def f32(x):
    """x (a Fraction, int or float) rounded to the nearest f32, ties to even."""
    x = Fraction(x)
    if x == 0:
        return 0.0
    sign = -1 if x < 0 else 1
    x = abs(x)
    e = x.numerator.bit_length() - x.denominator.bit_length()
    if Fraction(2) ** e > x:
        e -= 1
    e = max(e, -126)  # subnormals share the smallest exponent
    scaled = x / Fraction(2) ** (e - 23)  # 24 significant bits above the point
    q, r = divmod(scaled.numerator, scaled.denominator)
    twice = 2 * r
    if twice > scaled.denominator or (twice == scaled.denominator and q % 2 == 1):
        q += 1
    value = Fraction(q) * Fraction(2) ** (e - 23)
    if value >= Fraction(2) ** 128 - Fraction(2) ** 104:
        return sign * float("inf")
    return sign * float(value)


def mul(p, q):
    return f32(Fraction(p) * Fraction(q))


def div(p, q):
    return f32(Fraction(p) / Fraction(q))


def add(p, q):
    return f32(Fraction(p) + Fraction(q))


def fma(p, q, r):
    return f32(Fraction(p) * Fraction(q) + Fraction(r))


def rt(x):
    return div(1, div(1, x))


def cvtps2dq(x):
    """x86 cvtps2dq: round half to even; NaN or out of i32 range gives INT32_MIN."""
    if x != x or x in (float("inf"), float("-inf")):
        return INT32_MIN
    r = round(Fraction(x))  # Python rounds halves to even
    return r if INT32_MIN <= r <= INT32_MAX else INT32_MIN


def pack(x, zp, relu):
    """FBGEMM/QNNPACK's store: cvtps2dq, saturate to i16, + zp saturating in i16, to u8."""
    q = cvtps2dq(x)
    q = max(-32768, min(32767, q))
    q = max(-32768, min(32767, q + zp))
    q = max(0, min(255, q))
    return max(q, zp) if relu else q


def fbgemm(acc, a, w, y, zp, bias, per_channel, relu, fused=True):
    atws = mul(a, w)
    c = div(atws, y)
    accf = f32(acc)
    if bias is None:
        s = accf
    elif per_channel:
        s = add(accf, div(bias, atws))
    elif fused:
        s = fma(bias, div(1, atws), accf)
    else:
        s = add(accf, mul(bias, div(1, atws)))
    return pack(mul(s, c), zp, relu)


def qnnpack(acc, a, w, y, zp, bias, per_channel, relu):
    bs = mul(w, a)
    qb = 0 if bias is None else cvt_clamp(f32(Fraction(bias) * Fraction(div(1, bs))))
    acc2 = wrap(acc + qb)
    r = mul(mul(w, a), div(1, y))
    return pack(mul(f32(acc2), r), zp, relu)


def cvt_clamp(x):
    r = round(Fraction(x))
    return max(INT32_MIN, min(INT32_MAX, r))


def wrap(v):
    return (v + 2**31) % 2**32 - 2**31


def onednn_matmul(acc, a, w, y, zp, bias, per_channel, relu):
    s = mul(rt(a), rt(w))
    d = mul(f32(acc), s)
    if bias is not None:
        d = add(d, bias)
    if relu:
        d = max(d, 0.0)
    t = mul(d, div(1, y))
    t = add(t, f32(zp))
    t = max(0.0, min(255.0, t))
    return int(round(Fraction(t)))


def onednn_variant(combined, ra, rw, dst):
    """oneDNN's f32 stage with its choices open: the two scales multiplied first or
    applied one after the other, each as given or round-tripped (rt), and the output
    scale applied as `· f32(1/y)`, `/ y`, `/ rt(y)` or `· f32(1/rt(y))`."""

    def formula(acc, a, w, y, zp, bias, per_channel, relu):
        sa = rt(a) if ra else a
        sw = rt(w) if rw else w
        accf = f32(acc)
        d = mul(accf, mul(sa, sw)) if combined else mul(mul(accf, sa), sw)
        if bias is not None:
            d = add(d, bias)
        if relu:
            d = max(d, 0.0)
        t = {
            "mul": lambda: mul(d, div(1, y)),
            "div": lambda: div(d, y),
            "div-rt": lambda: div(d, rt(y)),
            "mul-rt": lambda: mul(d, div(1, rt(y))),
        }[dst]()
        t = add(t, f32(zp))
        t = max(0.0, min(255.0, t))
        return int(round(Fraction(t)))

    return formula


ONEDNN_VARIANTS = {
    f"dnn {'ab' if c else 'a,b'}{' rt(a)' if ra else ''}{' rt(w)' if rw else ''} {dst}": onednn_variant(c, ra, rw, dst)
    for c in (True, False)
    for ra in (True, False)
    for rw in (True, False)
    for dst in ("mul", "div", "div-rt", "mul-rt")
}

FORMULAS = {
    "fbgemm": fbgemm,
    "fbgemm-unfused": lambda *args: fbgemm(*args, fused=False),
    "qnnpack": qnnpack,
    "onednn-matmul": onednn_matmul,
}


def linear_case(rng, k, n, per_channel, bias_scale, near_ties):
    """Weights, scales and a float bias that push sums near ties and past 2^24."""
    a_scale = float(np.float32(rng.uniform(0.001, 0.05)))
    a_zp = int(rng.integers(0, 256))
    w = rng.integers(-128, 128, size=(n, k), dtype=np.int64)
    if per_channel:
        w_scale = rng.uniform(0.0005, 0.02, size=n).astype(np.float32).astype(np.float64)
        w_zp = np.zeros(n, dtype=np.int64)
    else:
        w_scale = np.full(n, float(np.float32(rng.uniform(0.0005, 0.02))))
        w_zp = np.zeros(n, dtype=np.int64)
    bias = (rng.standard_normal(n) * bias_scale).astype(np.float32)
    y_scale = float(np.float32(rng.uniform(0.01, 2.0) if not near_ties else rng.uniform(0.001, 0.01)))
    y_zp = int(rng.integers(0, 256))
    return a_scale, a_zp, w, w_scale, w_zp, bias, y_scale, y_zp


def run_linear(engine, x_u8, case, per_channel, relu):
    a_scale, a_zp, w, w_scale, w_zp, bias, y_scale, y_zp = case
    torch.backends.quantized.engine = engine
    n, k = w.shape
    xq = torch._make_per_tensor_quantized_tensor(torch.from_numpy(x_u8.astype(np.uint8)), a_scale, a_zp)
    wi = torch.from_numpy(w.astype(np.int8))
    if not per_channel:
        wq = torch._make_per_tensor_quantized_tensor(wi, float(w_scale[0]), 0)
    else:
        wq = torch._make_per_channel_quantized_tensor(
            wi, torch.from_numpy(w_scale), torch.from_numpy(w_zp), 0
        )
    packed = torch.ops.quantized.linear_prepack(wq, torch.from_numpy(bias))
    op = torch.ops.quantized.linear_relu if relu else torch.ops.quantized.linear
    out = op(xq, packed, y_scale, y_zp)
    return out.int_repr().numpy().astype(np.int64)


def predict_np(name, acc, a, w, y, zp, bias, relu):
    """Fast f32 versions (numpy rounds each f32 operation once; the fma goes through
    f64, whose rare double rounding only matters for the search, not the verdict)."""
    F = np.float32
    accf = acc.astype(np.float32)
    if name.startswith("fbgemm"):
        atws = F(a) * F(w)
        c = F(atws / F(y))
        rcp = F(F(1) / atws)
        s = F(np.float64(bias) * np.float64(rcp) + accf.astype(np.float64)).astype(np.float32) if name == "fbgemm" \
            else F(accf + F(F(bias) * rcp))
        v = (s * c).astype(np.float32)
    elif name == "qnnpack":
        bs = F(F(w) * F(a))
        qb = int(np.rint(F(F(bias) * F(F(1) / bs))))
        acc2 = ((acc + qb + 2**31) % 2**32 - 2**31).astype(np.float32)
        v = (acc2 * F(bs * F(F(1) / F(y)))).astype(np.float32)
    else:
        sc = F(F(F(1) / F(F(1) / F(a))) * F(F(1) / F(F(1) / F(w))))
        d = (accf * sc).astype(np.float32) + F(bias)
        d = d.astype(np.float32)
        if relu:
            d = np.maximum(d, F(0))
        t = (d * F(F(1) / F(y))).astype(np.float32) + F(zp)
        t = np.clip(t.astype(np.float32), 0, 255)
        return np.rint(t).astype(np.int64)
    q = np.where(np.isfinite(v) & (np.abs(v) < 2**31), np.rint(v), INT32_MIN).astype(np.int64)
    q = np.clip(np.clip(np.clip(q, -32768, 32767) + zp, -32768, 32767), 0, 255)
    return np.maximum(q, zp) if relu else q


def onednn_variant_np(combined, ra, rw, dst):
    """[`onednn_variant`] on arrays of sums, for the search (numpy rounds each f32
    operation once)."""
    F = np.float32

    def rt32(x):
        return F(F(1) / F(F(1) / F(x)))

    def formula(acc, a, w, y, zp, bias, relu):
        sa, sw = (rt32(a) if ra else F(a)), (rt32(w) if rw else F(w))
        accf = acc.astype(np.float32)
        d = accf * F(sa * sw) if combined else (accf * sa).astype(np.float32) * sw
        d = (d.astype(np.float32) + F(bias)).astype(np.float32)
        if relu:
            d = np.maximum(d, F(0))
        t = {
            "mul": lambda: d * F(F(1) / F(y)),
            "div": lambda: d / F(y),
            "div-rt": lambda: d / rt32(y),
            "mul-rt": lambda: d * F(F(1) / rt32(y)),
        }[dst]().astype(np.float32)
        t = np.clip((t + F(zp)).astype(np.float32), 0, 255)
        return np.rint(t).astype(np.int64)

    return formula


ONEDNN_VARIANTS_NP = [
    onednn_variant_np(c, ra, rw, dst)
    for c in (True, False)
    for ra in (True, False)
    for rw in (True, False)
    for dst in ("mul", "div", "div-rt", "mul-rt")
]


def directed_case(rng, n, k, per_channel, bias_scale, split=None):
    """A linear layer (one row of input) whose every column's sum is chosen where the
    formulas disagree, found by search over candidate sums and realized in the weights."""
    a_scale = float(np.float32(rng.uniform(0.001, 0.05)))
    a_zp = int(rng.integers(3, 253))
    w_scale = (rng.uniform(0.0005, 0.02, size=n) if per_channel else np.full(n, rng.uniform(0.0005, 0.02)))
    w_scale = w_scale.astype(np.float32).astype(np.float64)
    bias = (rng.standard_normal(n) * bias_scale).astype(np.float32)
    y_scale = float(np.float32(rng.uniform(0.001, 0.05)))
    # With a split to search, scales whose round trip through 1/x moves them.
    while split and rt(y_scale) == y_scale:
        y_scale = float(np.float32(rng.uniform(0.001, 0.05)))
    while split and rt(a_scale) == a_scale:
        a_scale = float(np.float32(rng.uniform(0.001, 0.05)))
    while split and not per_channel and rt(float(w_scale[0])) == float(w_scale[0]):
        w_scale = np.full(n, float(np.float32(rng.uniform(0.0005, 0.02))))
    y_zp = int(rng.integers(0, 256))
    relu = bool(rng.integers(0, 2))
    x = np.where(rng.random(k) < 0.5, 255, 0).astype(np.int64)
    x[:4] = [a_zp + 1, a_zp - 1, a_zp + 2, a_zp - 2]
    d = x - a_zp
    reach = int(np.abs(d).sum()) * 127
    targets = np.empty(n, dtype=np.int64)
    names = ["fbgemm", "fbgemm-unfused", "qnnpack", "onednn-matmul"]
    for j in range(n):
        # Candidate sums: near where the output is in range, and anywhere up to reach.
        centre = (float(y_zp) * -1 + rng.uniform(0, 255)) * y_scale / (a_scale * w_scale[j]) - bias[j] / (a_scale * w_scale[j])
        cand = np.concatenate([
            np.clip(np.int64(centre) + rng.integers(-200000, 200000, 20000), -reach, reach),
            rng.integers(-reach, reach, 2000),
        ])
        preds = [predict_np(nm, cand, a_scale, w_scale[j], y_scale, y_zp, bias[j], relu) for nm in names]
        # Every other column also where oneDNN's open choices disagree among themselves.
        if j % 2 == 1:
            variants = split or ONEDNN_VARIANTS_NP
            preds = [f(cand, a_scale, w_scale[j], y_scale, y_zp, bias[j], relu) for f in variants]
        differ = np.zeros(cand.size, dtype=bool)
        for p in preds[1:]:
            differ |= p != preds[0]
        pick = cand[differ] if differ.any() else cand
        targets[j] = pick[rng.integers(0, pick.size)]
    w = np.zeros((n, k), dtype=np.int64)
    for j in range(n):
        r = int(targets[j])
        order = list(range(k - 1, 3, -1)) + [2, 3, 1, 0]
        for t in order:
            v = int(max(-128, min(127, round(r / d[t]))))
            w[j, t] = v
            r -= v * int(d[t])
        assert r == 0, (targets[j], r)
    return (a_scale, a_zp, w, w_scale, np.zeros(n, dtype=np.int64), bias, y_scale, y_zp), x[None, :], relu


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=23)
    ap.add_argument("--cases", type=int, default=12)
    ap.add_argument("--variants", action="store_true", help="also oneDNN's open choices (onednn engine only)")
    ap.add_argument(
        "--split",
        action="store_true",
        help="search the data where the two oneDNN variants still open on Zen 4 differ "
        "(scales applied in turn, each as given or round-tripped; output scale · f32(1/y), / y or / rt(y))",
    )
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(l for l in f if l.startswith("flags")).split(":")[1]
    except (OSError, StopIteration):
        pass
    wanted = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f" {f}" in flags]
    print(f"torch {torch.__version__} on {platform.machine()}, CPU flags: {' '.join(wanted)}")
    engines = [e for e in ("fbgemm", "x86", "qnnpack", "onednn") if e in torch.backends.quantized.supported_engines]
    totals = {}

    def tally(engine, per_channel, relu, case, x, formulas):
        """Runs the engine on one layer and counts where each formula misses it."""
        a_scale, a_zp, w, w_scale, w_zp, bias, y_scale, y_zp = case
        acc = (x - a_zp) @ (w - w_zp[:, None]).T  # m × n, exact
        got = run_linear(engine, x, case, per_channel, relu)
        for name, formula in formulas.items():
            pred = np.array([
                [formula(int(acc[i, j]), a_scale, float(w_scale[j]), y_scale, y_zp, float(bias[j]), per_channel, relu)
                 for j in range(acc.shape[1])]
                for i in range(acc.shape[0])
            ])
            key = (engine, "per-channel" if per_channel else "per-tensor", name)
            seen, bad = totals.get(key, (0, 0))
            totals[key] = (seen + got.size, bad + int((pred != got).sum()))

    # Directed: every output where the formulas disagree (|acc| up to 2^25, biases to 1e6).
    for c in range(args.cases):
        per_channel = c % 2 == 1
        split = (
            [onednn_variant_np(False, ra, rw, d) for ra in (True, False) for rw in (True, False) for d in ("mul", "div", "div-rt")]
            if args.split
            else None
        )
        case, x, relu = directed_case(rng, 48, 1024, per_channel, [1.0, 1e3, 1e6][c % 3], split)
        for engine in engines:
            formulas = dict(FORMULAS)
            if args.variants and engine == "onednn":
                formulas.update(ONEDNN_VARIANTS)
            tally(engine, per_channel, relu, case, x, formulas)
    # Random layers, with and without ReLU.
    for c in range(args.cases):
        per_channel = c % 2 == 1
        k = int(rng.choice([3, 64, 300, 1000]))
        n = int(rng.choice([5, 16, 33]))
        case = linear_case(rng, k, n, per_channel, bias_scale=[1.0, 1e3, 1e6][c % 3], near_ties=c % 4 < 2)
        x = rng.integers(0, 256, size=(7, k), dtype=np.int64)
        if c % 3 == 2:
            x[:] = np.where(rng.random((7, k)) < 0.5, 255, 0)  # extremes: large |acc|
        for relu in (False, True):
            for engine in engines:
                tally(engine, per_channel, relu, case, x, FORMULAS)
    print(f"{'engine':8} {'weights':12} {'formula':15} {'outputs':>8} {'mismatches':>10}")
    for (engine, weights, name), (seen, bad) in sorted(totals.items()):
        print(f"{engine:8} {weights:12} {name:15} {seen:8} {bad:10}")


if __name__ == "__main__":
    main()
