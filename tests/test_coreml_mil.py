"""The numpy MIL executor (emulated Core ML) against torch/numpy references."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

ct = pytest.importorskip("coremltools")
torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from coremltools.converters.mil import Builder as mb  # noqa: E402
from coremltools.converters.mil.mil import types  # noqa: E402

from zoo.runtimes.coreml_mil import (  # noqa: E402
    OPS,
    CoreMLEmulatedSession,
    MilExecutor,
    UnsupportedCoreMLModel,
    UnsupportedMilOp,
    load_program,
)

RNG = np.random.default_rng(0)


def rand(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def run_mil(build, *inputs, opset=ct.target.iOS17, emulate_fp16=False):
    """Build a MIL program from `build(*input_vars)` and run it on `inputs` (fp32 arrays)."""
    specs = [mb.TensorSpec(shape=x.shape, dtype=types.fp32) for x in inputs]
    program = mb.program(input_specs=specs, opset_version=opset)(build)
    executor = MilExecutor(program, emulate_fp16=emulate_fp16)
    names = list(executor.input_vars)
    outs = list(executor.run(dict(zip(names, inputs))).values())
    return outs[0] if len(outs) == 1 else outs


def t(x):
    return torch.from_numpy(np.asarray(x))


# ------------------------------------------------------------------ op by op, fp32


X4 = rand(2, 4, 9, 11)
W_CONV = rand(6, 4, 3, 3)
W_DW = rand(8, 1, 3, 3)  # depthwise, channel multiplier 2
B6, B8 = rand(6), rand(8)


def _same_pad_ref(x, k, s, lower=False):
    # TF-style "same": total = (ceil(i/s)-1)*s + k - i, odd extra after (before for same_lower)
    pads = []
    for size in reversed(x.shape[2:]):
        total = max(0, (-(-size // s) - 1) * s + k - size)
        small, large = total // 2, total - total // 2
        pads += [large, small] if lower else [small, large]
    return F.pad(t(x), pads)


CASES = {
    "conv_custom_pad_stride": (
        lambda x: mb.conv(x=x, weight=W_CONV, bias=B6, strides=[2, 2], pad_type="custom", pad=[1, 0, 2, 1]),
        lambda x: F.conv2d(F.pad(t(x), [2, 1, 1, 0]), t(W_CONV), t(B6), stride=2),
        [X4],
    ),
    "conv_same_depthwise": (
        lambda x: mb.conv(x=x, weight=W_DW, bias=B8, strides=[2, 2], pad_type="same", groups=4),
        lambda x: F.conv2d(_same_pad_ref(x, 3, 2), t(W_DW), t(B8), stride=2, groups=4),
        [X4],
    ),
    "conv_same_lower_dilated": (
        lambda x: mb.conv(x=x, weight=W_CONV, pad_type="same_lower", dilations=[2, 1]),
        lambda x: F.conv2d(F.pad(t(x), [1, 1, 2, 2]), t(W_CONV), dilation=(2, 1)),
        [X4],
    ),
    "conv_grouped_valid": (
        lambda x: mb.conv(x=x, weight=W_CONV[:, :2], groups=2),
        lambda x: F.conv2d(t(x), t(W_CONV[:, :2]), groups=2),
        [X4],
    ),
    "conv1d": (
        lambda x: mb.conv(x=x, weight=W_CONV[:, :, 0], pad_type="custom", pad=[1, 1]),
        lambda x: F.conv1d(t(x), t(W_CONV[:, :, 0]), padding=1),
        [rand(2, 4, 7)],
    ),
    "linear": (
        lambda x: mb.linear(x=x, weight=W_CONV[:, :, 0, 0], bias=B6),
        lambda x: F.linear(t(x), t(W_CONV[:, :, 0, 0]), t(B6)),
        [rand(2, 3, 4)],
    ),
    "matmul_transpose_y": (
        lambda x, y: mb.matmul(x=x, y=y, transpose_y=True),
        lambda x, y: t(x) @ t(y).transpose(-1, -2),
        [rand(2, 3, 5, 4), rand(3, 6, 4)],
    ),
    "matmul_transpose_x": (
        lambda x, y: mb.matmul(x=x, y=y, transpose_x=True),
        lambda x, y: t(x).transpose(-1, -2) @ t(y),
        [rand(2, 4, 5), rand(2, 4, 3)],
    ),
    # the only einsum MIL has; here with H broadcast from y
    "einsum": (
        lambda x, y: mb.einsum(values=(x, y), equation="abcd,adce->abce"),
        lambda x, y: torch.einsum("abcd,adce->abce", t(x), t(y).expand(2, 4, 3, 6)),
        [rand(2, 5, 3, 4), rand(2, 4, 1, 6)],
    ),
    "sdpa": (
        lambda q, k, v: mb.scaled_dot_product_attention(query=q, key=k, value=v),
        lambda q, k, v: F.scaled_dot_product_attention(t(q), t(k), t(v)),
        [rand(2, 3, 5, 8), rand(2, 3, 7, 8), rand(2, 3, 7, 4)],
    ),
    "layer_norm_last": (
        lambda x: mb.layer_norm(x=x, axes=[-1], gamma=B6, beta=B6[::-1].copy(), epsilon=1e-6),
        lambda x: F.layer_norm(t(x), (6,), t(B6), t(B6[::-1].copy()), eps=1e-6),
        [rand(2, 5, 6, scale=3.0)],
    ),
    "layer_norm_channels": (
        lambda x: mb.layer_norm(x=x, axes=[1], gamma=B6[:4], beta=B6[2:]),
        lambda x: F.layer_norm(t(x).movedim(1, -1), (4,), t(B6[:4]), t(B6[2:]), eps=1e-5).movedim(-1, 1),
        [X4],
    ),
    "batch_norm": (
        lambda x: mb.batch_norm(x=x, mean=B6[:4], variance=np.abs(B6[2:]), gamma=B8[:4], beta=B8[4:], epsilon=1e-3),
        lambda x: F.batch_norm(t(x), t(B6[:4]), t(np.abs(B6[2:])), t(B8[:4]), t(B8[4:]), eps=1e-3),
        [X4],
    ),
    "instance_norm": (
        lambda x: mb.instance_norm(x=x, gamma=B8[:4], beta=B8[4:]),
        lambda x: F.instance_norm(t(x), weight=t(B8[:4]), bias=t(B8[4:]), eps=1e-5),
        [X4],
    ),
    "l2_norm": (
        lambda x: mb.l2_norm(x=x, epsilon=1e-6),
        lambda x: t(x) / torch.sqrt((t(x) ** 2).sum(dim=(1, 2, 3), keepdim=True) + 1e-6),
        [X4],
    ),
    "softmax": (lambda x: mb.softmax(x=x, axis=1), lambda x: torch.softmax(t(x), 1), [rand(2, 5, 3, scale=5)]),
    "gelu_exact": (lambda x: mb.gelu(x=x, mode="EXACT"), lambda x: F.gelu(t(x)), [rand(3, 50, scale=3)]),
    "gelu_tanh": (
        lambda x: mb.gelu(x=x, mode="TANH_APPROXIMATION"),
        lambda x: F.gelu(t(x), approximate="tanh"),
        [rand(3, 50, scale=3)],
    ),
    "gelu_sigmoid": (
        lambda x: mb.gelu(x=x, mode="SIGMOID_APPROXIMATION"),
        lambda x: t(x) * torch.sigmoid(1.702 * t(x)),
        [rand(3, 50, scale=3)],
    ),
    "erf": (lambda x: mb.erf(x=x), lambda x: torch.erf(t(x)), [rand(4, 50, scale=2)]),
    "silu": (lambda x: mb.silu(x=x), lambda x: F.silu(t(x)), [rand(4, 50, scale=5)]),
    "relu": (lambda x: mb.relu(x=x), lambda x: F.relu(t(x)), [rand(4, 50)]),
    "relu6": (lambda x: mb.relu6(x=x), lambda x: F.relu6(t(x)), [rand(4, 50, scale=5)]),
    "sigmoid": (lambda x: mb.sigmoid(x=x), lambda x: torch.sigmoid(t(x)), [rand(4, 50, scale=20)]),
    "tanh": (lambda x: mb.tanh(x=x), lambda x: torch.tanh(t(x)), [rand(4, 50)]),
    "hard_sigmoid": (
        lambda x: mb.sigmoid_hard(x=x, alpha=1 / 6, beta=0.5),
        lambda x: F.hardsigmoid(t(x)),
        [rand(4, 50, scale=5)],
    ),
    # how coremltools lowers torch's hardswish (mobilenetv3)
    "hard_swish": (
        lambda x: mb.mul(x=mb.thresholded_relu(x=x, alpha=-3.0), y=mb.sigmoid_hard(x=x, alpha=1 / 6, beta=0.5)),
        lambda x: F.hardswish(t(x)),
        [rand(4, 50, scale=5)],
    ),
    "leaky_relu": (lambda x: mb.leaky_relu(x=x, alpha=0.1), lambda x: F.leaky_relu(t(x), 0.1), [rand(4, 50)]),
    "clip": (lambda x: mb.clip(x=x, alpha=-0.5, beta=0.7), lambda x: t(x).clamp(-0.5, 0.7), [rand(4, 50)]),
    "add": (lambda x, y: mb.add(x=x, y=y), lambda x, y: t(x) + t(y), [rand(2, 3, 4), rand(3, 1)]),
    "sub": (lambda x, y: mb.sub(x=x, y=y), lambda x, y: t(x) - t(y), [rand(2, 3, 4), rand(4)]),
    "mul": (lambda x, y: mb.mul(x=x, y=y), lambda x, y: t(x) * t(y), [rand(2, 3, 4), rand(2, 1, 4)]),
    "real_div": (lambda x: mb.real_div(x=x, y=np.float32(3.0)), lambda x: t(x) / 3.0, [rand(2, 3)]),
    "pow": (lambda x: mb.pow(x=mb.abs(x=x), y=np.float32(1.7)), lambda x: t(x).abs() ** 1.7, [rand(2, 30)]),
    "sqrt": (lambda x: mb.sqrt(x=mb.abs(x=x)), lambda x: t(x).abs().sqrt(), [rand(2, 30)]),
    "rsqrt": (
        lambda x: mb.rsqrt(x=mb.abs(x=x), epsilon=1e-3),
        lambda x: 1 / torch.sqrt(t(x).abs() + 1e-3),
        [rand(2, 30)],
    ),
    "exp_log": (lambda x: mb.log(x=mb.exp(x=x)), lambda x: t(x), [rand(2, 30)]),
    "maximum": (lambda x, y: mb.maximum(x=x, y=y), lambda x, y: torch.maximum(t(x), t(y)), [rand(3, 4), rand(3, 4)]),
    "minimum": (lambda x, y: mb.minimum(x=x, y=y), lambda x, y: torch.minimum(t(x), t(y)), [rand(3, 4), rand(3, 4)]),
    "reduce_mean": (
        lambda x: mb.reduce_mean(x=x, axes=[2, 3], keep_dims=True),
        lambda x: t(x).mean((2, 3), keepdim=True),
        [X4],
    ),
    "reduce_sum": (lambda x: mb.reduce_sum(x=x, axes=[-1]), lambda x: t(x).sum(-1), [X4]),
    "reduce_max": (lambda x: mb.reduce_max(x=x, axes=[1]), lambda x: t(x).amax(1), [X4]),
    "reduce_l2_norm": (
        lambda x: mb.reduce_l2_norm(x=x, axes=[-1], keep_dims=True),
        lambda x: t(x).norm(dim=-1, keepdim=True),
        [rand(3, 16)],
    ),
    "transpose": (lambda x: mb.transpose(x=x, perm=[0, 2, 3, 1]), lambda x: t(x).permute(0, 2, 3, 1), [X4]),
    "reshape": (lambda x: mb.reshape(x=x, shape=[2, -1, 11]), lambda x: t(x).reshape(2, -1, 11), [X4]),
    "squeeze": (lambda x: mb.squeeze(x=x, axes=[1]), lambda x: t(x).squeeze(1), [rand(2, 1, 3, 1)]),
    "squeeze_all": (lambda x: mb.squeeze(x=x), lambda x: t(x).squeeze(), [rand(2, 1, 3, 1)]),
    "expand_dims": (lambda x: mb.expand_dims(x=x, axes=[0, -1]), lambda x: t(x)[None, ..., None], [rand(2, 3)]),
    "tile": (lambda x: mb.tile(x=x, reps=[2, 1, 3]), lambda x: t(x).repeat(2, 1, 3), [rand(2, 3, 4)]),
    "concat": (
        lambda x, y: mb.concat(values=(x, y, x), axis=-2),
        lambda x, y: torch.cat([t(x), t(y), t(x)], -2),
        [rand(2, 3, 4), rand(2, 5, 4)],
    ),
    "concat_interleave": (
        lambda x, y: mb.concat(values=(x, y), axis=1, interleave=True),
        lambda x, y: torch.stack([t(x), t(y)], 2).reshape(2, 6, 4),
        [rand(2, 3, 4), rand(2, 3, 4)],
    ),
    "slice_by_index": (
        lambda x: mb.slice_by_index(
            x=x,
            begin=[0, 1, 0, 2],
            end=[0, 4, 9, -1],
            stride=[1, 2, 3, 1],
            begin_mask=[False, False, True, False],
            squeeze_mask=[True, False, False, False],
        ),
        lambda x: t(x)[0, 1:4:2, ::3, 2:-1],
        [X4],
    ),
    "slice_by_size": (
        lambda x: mb.slice_by_size(x=x, begin=[1, 0, 2, -4], size=[1, -1, 4, 4]),
        lambda x: t(x)[1:2, :, 2:6, -4:],
        [X4],
    ),
    "gather": (
        lambda x: mb.gather(x=x, indices=np.array([[2, 0], [-1, 1]], np.int32), axis=1),
        lambda x: t(x)[:, [[2, 0], [3, 1]]],
        [X4],
    ),
    "gather_batch_dims": (
        lambda x: mb.gather(x=x, indices=np.array([[2, 0], [1, 1]], np.int32), axis=1, batch_dims=1),
        lambda x: torch.stack([t(x)[0, [2, 0]], t(x)[1, [1, 1]]]),
        [rand(2, 4, 3)],
    ),
    "split_sizes": (
        lambda x: mb.split(x=x, split_sizes=[1, 3], axis=1)[1],
        lambda x: t(x)[:, 1:],
        [X4],
    ),
    "split_num": (
        lambda x: mb.split(x=x, num_splits=2, axis=-1)[0],
        lambda x: t(x)[..., :3],
        [rand(2, 3, 6)],
    ),
    "cast_int_roundtrip": (
        lambda x: mb.cast(x=mb.cast(x=x, dtype="int32"), dtype="fp32"),
        lambda x: t(x).to(torch.int32).float(),
        [rand(3, 20, scale=5)],
    ),
    "pad_constant": (
        lambda x: mb.pad(x=x, pad=[1, 2, 0, 3], mode="constant", constant_val=0.5),
        lambda x: F.pad(t(x), [0, 3, 1, 2], value=0.5),
        [X4],
    ),
    "pad_reflect": (
        lambda x: mb.pad(x=x, pad=[1, 2, 2, 1], mode="reflect"),
        lambda x: F.pad(t(x), [2, 1, 1, 2], mode="reflect"),
        [X4],
    ),
    "pad_replicate": (
        lambda x: mb.pad(x=x, pad=[1, 2, 2, 1], mode="replicate"),
        lambda x: F.pad(t(x), [2, 1, 1, 2], mode="replicate"),
        [X4],
    ),
    "max_pool_ceil": (
        lambda x: mb.max_pool(
            x=x, kernel_sizes=[3, 3], strides=[2, 2], pad_type="custom", pad=[1, 1, 1, 1], ceil_mode=True
        ),
        lambda x: F.max_pool2d(t(x), 3, 2, padding=1, ceil_mode=True),
        [X4],
    ),
    "avg_pool_count_pad": (
        lambda x: mb.avg_pool(x=x, kernel_sizes=[3, 3], strides=[2, 2], pad_type="custom", pad=[1, 1, 1, 1]),
        lambda x: F.avg_pool2d(t(x), 3, 2, padding=1, count_include_pad=True),
        [X4],
    ),
    "avg_pool_exclude_pad_ceil": (
        lambda x: mb.avg_pool(
            x=x,
            kernel_sizes=[3, 3],
            strides=[2, 2],
            pad_type="custom",
            pad=[1, 1, 1, 1],
            exclude_padding_from_average=True,
            ceil_mode=True,
        ),
        lambda x: F.avg_pool2d(t(x), 3, 2, padding=1, ceil_mode=True, count_include_pad=False),
        [X4],
    ),
    "avg_pool_ceil_count_pad": (
        lambda x: mb.avg_pool(
            x=x, kernel_sizes=[2, 2], strides=[2, 2], pad_type="custom", pad=[1, 1, 1, 1], ceil_mode=True
        ),
        lambda x: F.avg_pool2d(t(x), 2, 2, padding=1, ceil_mode=True, count_include_pad=True),
        [X4],
    ),
    "avg_pool_valid": (
        lambda x: mb.avg_pool(x=x, kernel_sizes=[2, 3], strides=[1, 2], pad_type="valid"),
        lambda x: F.avg_pool2d(t(x), (2, 3), (1, 2)),
        [X4],
    ),
}


# the remaining simple ops, against numpy
A, P = rand(3, 4, 5), np.abs(rand(3, 4, 5)) + 0.1
IDX = RNG.integers(0, 4, (3, 2, 5)).astype(np.int32)
CASES.update(
    {
        "abs": (lambda x: mb.abs(x=x), np.abs, [A]),
        "ceil": (lambda x: mb.ceil(x=x), np.ceil, [A]),
        "floor": (lambda x: mb.floor(x=x), np.floor, [A]),
        "round": (lambda x: mb.round(x=x), np.round, [A]),
        "sign": (lambda x: mb.sign(x=x), np.sign, [A]),
        "exp2": (lambda x: mb.exp2(x=x), np.exp2, [A]),
        "sin_cos": (lambda x: mb.add(x=mb.sin(x=x), y=mb.cos(x=x)), lambda x: np.sin(x) + np.cos(x), [A]),
        "square": (lambda x: mb.square(x=x), np.square, [A]),
        "identity": (lambda x: mb.identity(x=x), lambda x: x, [A]),
        "inverse": (lambda x: mb.inverse(x=x, epsilon=0.01), lambda x: 1 / (x + 0.01), [P]),
        "softplus": (lambda x: mb.softplus(x=x), lambda x: np.log1p(np.exp(x)), [A]),
        "softsign": (lambda x: mb.softsign(x=x), lambda x: x / (1 + np.abs(x)), [A]),
        "elu": (lambda x: mb.elu(x=x, alpha=0.5), lambda x: np.where(x > 0, x, 0.5 * np.expm1(x)), [A]),
        "prelu": (
            lambda x: mb.prelu(x=x, alpha=np.array([0.1, 0.2, 0.3, 0.4], np.float32)),
            lambda x: np.where(x >= 0, x, np.array([0.1, 0.2, 0.3, 0.4], np.float32)[:, None, None] * x),
            [X4],
        ),
        "clamped_relu": (
            lambda x: mb.clamped_relu(x=x, alpha=0.1, beta=0.5),
            lambda x: np.minimum(np.where(x >= 0, x, 0.1 * x), 0.5),
            [A],
        ),
        "linear_activation": (lambda x: mb.linear_activation(x=x, alpha=2.0, beta=-1.0), lambda x: 2 * x - 1, [A]),
        "scaled_tanh": (lambda x: mb.scaled_tanh(x=x, alpha=2.0, beta=0.5), lambda x: 2 * np.tanh(0.5 * x), [A]),
        "floor_div_mod": (
            lambda x, y: mb.add(x=mb.floor_div(x=x, y=y), y=mb.mod(x=x, y=y)),
            lambda x, y: np.floor_divide(x, y) + np.mod(x, y),
            [A * 5, P],
        ),
        "compare_select": (
            lambda x, y: mb.select(
                cond=mb.logical_or(x=mb.less(x=x, y=y), y=mb.logical_not(x=mb.greater_equal(x=x, y=y))),
                a=x,
                b=mb.real_div(x=y, y=np.float32(2.0)),
            ),
            lambda x, y: np.where(x < y, x, y / 2),
            [A, rand(3, 4, 5)],
        ),
        "reduce_min_prod": (
            lambda x: mb.add(x=mb.reduce_min(x=x, axes=[0]), y=mb.reduce_prod(x=x, axes=[0])),
            lambda x: x.min(0) + x.prod(0),
            [A],
        ),
        "reduce_norms": (
            lambda x: mb.add(x=mb.reduce_l1_norm(x=x, axes=[1]), y=mb.reduce_sum_square(x=x, axes=[1])),
            lambda x: np.abs(x).sum(1) + np.square(x).sum(1),
            [A],
        ),
        "reduce_logs": (
            lambda x: mb.add(x=mb.reduce_log_sum(x=x, axes=[-1]), y=mb.reduce_log_sum_exp(x=x, axes=[-1])),
            lambda x: np.log(x.sum(-1)) + np.log(np.exp(x).sum(-1)),
            [P],
        ),
        "flatten2d": (lambda x: mb.flatten2d(x=x, axis=2), lambda x: x.reshape(12, 5), [A]),
        "stack": (lambda x, y: mb.stack(values=(x, y), axis=1), lambda x, y: np.stack([x, y], 1), [A, P]),
        "pixel_shuffle": (
            lambda x: mb.pixel_shuffle(x=x, upscale_factor=2),
            lambda x: F.pixel_shuffle(t(x), 2).numpy(),
            [rand(2, 8, 3, 5)],
        ),
        "pixel_unshuffle": (
            lambda x: mb.pixel_unshuffle(x=x, downscale_factor=np.uint32(2)),
            lambda x: F.pixel_unshuffle(t(x), 2).numpy(),
            [rand(2, 3, 6, 4)],
        ),
        "upsample_bilinear_half_pixel": (
            lambda x: mb.upsample_bilinear(x=x, scale_factor_height=2.0, scale_factor_width=3.0, align_corners=False),
            lambda x: F.interpolate(t(x), scale_factor=(2, 3), mode="bilinear", align_corners=False).numpy(),
            [X4],
        ),
        "upsample_bilinear_align_corners": (
            lambda x: mb.upsample_bilinear(x=x, scale_factor_height=2.0, scale_factor_width=2.0, align_corners=True),
            lambda x: F.interpolate(t(x), scale_factor=2, mode="bilinear", align_corners=True).numpy(),
            [X4],
        ),
        "upsample_nearest": (
            lambda x: mb.upsample_nearest_neighbor(x=x, scale_factor_height=2, scale_factor_width=3),
            lambda x: F.interpolate(t(x), scale_factor=(2, 3), mode="nearest").numpy(),
            [X4],
        ),
        "gather_along_axis": (
            lambda x: mb.gather_along_axis(x=x, indices=IDX, axis=1),
            lambda x: np.take_along_axis(x, IDX, 1),
            [A],
        ),
    }
)


@pytest.mark.parametrize("case", sorted(CASES))
def test_op_matches_reference(case):
    build, reference, inputs = CASES[case]
    opset = ct.target.iOS18 if case == "sdpa" else ct.target.iOS17
    got = run_mil(build, *inputs, opset=opset)
    want = np.asarray(reference(*inputs))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_compressed_weights_constexpr_ops():
    q = RNG.integers(0, 255, (3, 4)).astype(np.uint8)
    zp, scale = np.array([3, 100, 7], np.uint8), np.array([0.5, 0.1, 2.0], np.float32)

    bias = rand(3).astype(np.float16)

    def build(x):
        w = mb.constexpr_affine_dequantize(quantized_data=q, zero_point=zp, scale=scale, axis=0)
        return mb.linear(x=x, weight=w, bias=mb.constexpr_cast(source_val=bias, output_dtype="fp32"))

    x = rand(2, 4)
    want = x @ ((q.astype(np.float32) - zp[:, None]) * scale[:, None]).T + bias.astype(np.float32)
    np.testing.assert_allclose(run_mil(build, x, opset=ct.target.iOS16), want, rtol=1e-5, atol=1e-5)


def test_multiple_outputs_and_split():
    x = rand(2, 6)
    a, b = run_mil(lambda x: mb.split(x=x, num_splits=2, axis=1), x)
    np.testing.assert_array_equal(a, x[:, :3])
    np.testing.assert_array_equal(b, x[:, 3:])


# ------------------------------------------------------------------ fp16 emulation


def test_fp16_ops_round_each_result():
    # adding 2**-12 to x in [1, 2) is below half an fp16 ulp (2**-11): rounding after every op keeps x
    x = (1.0 + RNG.random((4, 8))).astype(np.float32)
    step = np.float16(2.0**-12)

    def build(x):
        y = mb.cast(x=x, dtype="fp16")
        for _ in range(5):
            y = mb.add(x=y, y=step)
        return mb.cast(x=y, dtype="fp32")

    x16 = x.astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(run_mil(build, x, emulate_fp16=True), x16)
    # not emulating, nothing is rounded to fp16: not even the cast of the input
    exact = x
    for _ in range(5):
        exact = exact + np.float32(step)
    np.testing.assert_array_equal(run_mil(build, x, emulate_fp16=False), exact)


def test_fp16_op_is_computed_in_fp32_then_rounded():
    x, y = rand(64), rand(64)

    def build(x, y):
        return mb.cast(x=mb.real_div(x=mb.cast(x=x, dtype="fp16"), y=mb.cast(x=y, dtype="fp16")), dtype="fp32")

    x16, y16 = x.astype(np.float16), y.astype(np.float16)
    want = (x16.astype(np.float32) / y16.astype(np.float32)).astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(run_mil(build, x, y, emulate_fp16=True), want)


# ------------------------------------------------------------------ errors


def test_unknown_ops_are_all_named_up_front():
    def build(x):
        return mb.argsort(x=mb.cumsum(x=mb.relu(x=x), axis=0))

    program = mb.program(input_specs=[mb.TensorSpec(shape=(4,))], opset_version=ct.target.iOS17)(build)
    assert "cumsum" not in OPS and "argsort" not in OPS
    with pytest.raises(UnsupportedMilOp) as info:
        MilExecutor(program, emulate_fp16=False)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert "argsort" in message and "cumsum" in message and "relu" not in message


def test_neuralnetwork_mlmodel_is_rejected_clearly(tmp_path):
    traced = torch.jit.trace(torch.nn.Linear(4, 2).eval(), torch.zeros(1, 4))
    model = ct.convert(traced, inputs=[ct.TensorType(shape=(1, 4))], convert_to="neuralnetwork")
    path = tmp_path / "tiny.mlmodel"
    model.save(str(path))
    with pytest.raises(UnsupportedCoreMLModel, match="neuralNetwork.*mlprogram"):
        load_program(path)


# ------------------------------------------------------------------ end to end: timm → Core ML → numpy


def _timm():
    from zoo._torchvision_compat import import_timm

    return import_timm()


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # the models are tiny: extra OpenMP threads only spin, and crawl on a busy 2-core machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


IMAGE = (3, 160, 160)  # the timm test models' own size; mobilenetv3 is fully convolutional


class Embedder(torch.nn.Module):
    def __init__(self, name: str):
        super().__init__()
        self.backbone = _timm().create_model(name, pretrained=False, num_classes=0, exportable=True)
        with torch.no_grad():
            width = self.backbone(torch.zeros(1, *IMAGE)).shape[-1]
        self.head = torch.nn.Linear(width, 32)

    def forward(self, x):
        return F.normalize(self.head(self.backbone(x)), dim=-1)


MODELS = ["test_convnext", "test_vit", "test_efficientnet", "mobilenetv3_small_050"]


def _traced(name: str, n: int, trace_batch: int = 1):
    """(torch embeddings of n random images, the images, the traced model) for one timm model."""
    torch.manual_seed(0)
    model = Embedder(name).eval()
    x = np.random.default_rng(1).standard_normal((n, *IMAGE)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
        traced = torch.jit.trace(model, torch.from_numpy(x[:trace_batch]))
    return want, x, traced


def _convert(traced, path, input_shape, precision, **kwargs):
    mlmodel = ct.convert(
        traced,
        inputs=[ct.TensorType(name="images", shape=input_shape, **kwargs)],
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS16,
        compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
    )
    mlmodel.save(str(path))
    return path


@pytest.fixture(scope="module", params=MODELS)
def converted(request, tmp_path_factory):
    """(torch embeddings, sample images, {precision: .mlpackage path}) for one timm model."""
    name = request.param
    want, x, traced = _traced(name, 2)
    folder = tmp_path_factory.mktemp(name)
    # default I/O: fp32 programs take fp32, fp16 programs (iOS16+) take and return fp16
    paths = {p: _convert(traced, folder / f"{p}.mlpackage", (1, *x.shape[1:]), p) for p in ("fp32", "fp16")}
    return want, x, paths


def cosines(a, b):
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_fp32_package_matches_torch(converted):
    want, x, paths = converted
    session = CoreMLEmulatedSession(paths["fp32"])
    assert not session.uses_fp16 and session.batch is None  # batch-1 program, looped
    got = session.run(x)
    assert got.shape == want.shape and got.dtype == np.float32
    assert cosines(got, want).min() >= 0.9999
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_fp16_package_matches_torch(converted):
    want, x, paths = converted
    session = CoreMLEmulatedSession(paths["fp16"])
    assert session.uses_fp16 and session.emulate_fp16
    got = session.run(x)
    assert cosines(got, want).min() >= 0.999
    # without the rounding the same fp16 program (fp16 weights) is far closer to torch:
    # the emulation, not an op bug, is what moves the numbers
    exact = CoreMLEmulatedSession(paths["fp16"], emulate_fp16=False).run(x)
    assert cosines(exact, want).min() >= 0.9999
    assert np.abs(got - exact).max() > 0


def test_dynamic_batch_program_runs_whole_batch(tmp_path):
    # a flexible batch makes the ViT compute its reshape/tile sizes at run time (shape, gather,
    # concat of scalars, select, integer real_div)
    want, x, traced = _traced("test_vit", 3, trace_batch=2)
    path = _convert(traced, tmp_path / "vit.mlpackage", (ct.RangeDim(1, 4, 2), *x.shape[1:]), "fp32")
    session = CoreMLEmulatedSession(path)
    assert session.batch is None
    assert {"shape", "gather", "select"} <= {op.op_type for op in session.executor.function.operations}
    assert cosines(session.run(x), want).min() >= 0.9999


def test_fixed_batch_fp16_program_with_fp32_io(tmp_path):
    want, x, traced = _traced("test_efficientnet", 2, trace_batch=2)
    path = _convert(traced, tmp_path / "effnet.mlpackage", x.shape, "fp16", dtype=np.float32)
    session = CoreMLEmulatedSession(path)
    assert session.batch == 2 and session.uses_fp16
    # fp32 inputs: the program casts to fp16 and back itself
    assert "cast" in {op.op_type for op in session.executor.function.operations}
    assert cosines(session.run(x), want).min() >= 0.999
    with pytest.raises(ValueError, match="fixed batch of 2"):
        session.run(np.concatenate([x, x[:1]]))


def test_coremltools_is_imported_lazily_and_its_absence_is_explained(monkeypatch, tmp_path):
    code = "import sys, zoo.runtimes.coreml_mil; assert 'coremltools' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    monkeypatch.setitem(sys.modules, "coremltools", None)
    with pytest.raises(ImportError, match=r"pip install 'zoo\[coreml\]'"):
        load_program(tmp_path)


class _Grn(torch.nn.Module):
    """ConvNeXt-V2's global response norm ends in addcmul, which coremltools 9 has no converter for."""

    def forward(self, x):
        gx = x.norm(p=2, dim=(2, 3), keepdim=True)
        nx = gx / (gx.mean(dim=1, keepdim=True) + 1e-6)
        return torch.addcmul(x, x, nx, value=0.5)


def test_zoo_registers_addcmul_and_it_converts_exactly(tmp_path):
    from zoo.converters.coreml_torch_ops import register_missing_ops

    register_missing_ops()
    assert register_missing_ops() == []  # once only; a converter coremltools has is never replaced
    x = rand(2, 4, 6, 6)
    traced = torch.jit.trace(_Grn().eval(), t(x[:1]))
    path = _convert(traced, tmp_path / "grn.mlpackage", (2, 4, 6, 6), "fp32")
    got = CoreMLEmulatedSession(path).run(x)
    want = _Grn()(t(x)).detach().numpy().reshape(2, -1)  # the session returns (batch, features)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
