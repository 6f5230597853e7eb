"""Run Core ML ML Programs (MIL) with numpy, so Core ML artifacts can be checked off macOS.

Core ML's runtime only exists on macOS, but coremltools can load the MIL program of a
saved ``.mlpackage`` on any platform. ``MilExecutor`` interprets that program op by op
with numpy. Its numbers are *emulated*: they follow the program's arithmetic, including
the fp16 rounding of every op the program types as fp16, but not the exact kernels
(accumulation order, fp16 accumulators, ANE/GPU approximations) of a real device.

fp16 emulation: an op whose output dtype is fp16 gets its inputs as float32 (their values
are already fp16-representable), computes in float32 and rounds its result to float16.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from zoo.runtimes import SessionBase

_INSTALL_HINT = "Core ML support needs the 'coreml' extra: pip install 'zoo[coreml]'"

# numpy storage dtype for each MIL dtype name (types.builtin_to_string)
_NP_DTYPES = {
    "fp16": np.float16,
    "fp32": np.float32,
    "fp64": np.float64,
    "int8": np.int8,
    "uint8": np.uint8,
    "int16": np.int16,
    "uint16": np.uint16,
    "int32": np.int32,
    "int64": np.int64,
    "bool": np.bool_,
}


class UnsupportedCoreMLModel(ValueError):
    """The model cannot be emulated (wrong format or unknown ops)."""


class UnsupportedMilOp(UnsupportedCoreMLModel):
    """The program uses MIL op types this executor does not implement."""


def _import_coremltools():
    # off macOS coremltools logs warnings on import (no native runtime): expected here
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import coremltools
    except ImportError as e:
        raise ImportError(_INSTALL_HINT) from e
    finally:
        logger.setLevel(level)
    return coremltools


def load_program(path: Path):
    """Load the MIL program (a coremltools ``Program``) of a saved Core ML model.

    Works for ML Program models (``.mlpackage``). Neural-network models (``.mlmodel``)
    have no MIL program and are rejected with ``UnsupportedCoreMLModel``.
    """
    ct = _import_coremltools()
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(path)
    if path.suffix == ".mlmodelc":
        raise UnsupportedCoreMLModel(f"{path}: compiled models (.mlmodelc) cannot be read; use the .mlpackage")
    # skip_model_load: only parse the spec, the Core ML runtime is not needed (or present)
    model = ct.models.MLModel(str(path), skip_model_load=True)
    spec = model.get_spec()
    kind = spec.WhichOneof("Type")
    if kind != "mlProgram":
        raise UnsupportedCoreMLModel(
            f"{path} is a '{kind}' Core ML model; only ML Program models can be emulated. "
            "Re-convert with convert_to='mlprogram' (saved as .mlpackage)."
        )
    program = milproto_load(spec, spec.specificationVersion, model.weights_dir or "")
    program.default_function_name = spec.description.defaultFunctionName or "main"
    return program


# --------------------------------------------------------------------------------------
# Op implementations. Each takes the op's MIL inputs as keyword arguments (numpy values,
# floats as float32) and returns one array, or a tuple for multi-output ops.
# --------------------------------------------------------------------------------------


def _ints(value, default=None) -> list[int]:
    if value is None:
        return list(default)
    return [int(v) for v in np.atleast_1d(value)]


def _axes(axes, ndim: int) -> tuple[int, ...] | None:
    if axes is None:
        return None
    return tuple(sorted(a % ndim for a in _ints(axes)))


def _erf(x):
    # numpy has no erf: Abramowitz & Stegun 7.1.26, max abs error 1.5e-7 (~fp32 resolution)
    x64 = np.asarray(x, np.float64)
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x64))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.sign(x64) * (1.0 - poly * np.exp(-x64 * x64))


def _sigmoid_fn(x):
    # exp of -|x| never overflows
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype)


def _softmax_fn(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _spatial_pads(pad_type, pad, in_shape, kernel, strides, dilations, ceil_mode=False):
    """(before, after) padding of each spatial dim, following MIL's pad_type rules."""
    pad_type = str(pad_type).lower()
    n = len(kernel)
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    if pad_type == "valid":
        pads = [(0, 0)] * n
    elif pad_type == "custom":
        p = _ints(pad, [0] * 2 * n)
        pads = [(p[2 * i], p[2 * i + 1]) for i in range(n)]
    elif pad_type in ("same", "same_lower"):
        pads = []
        for size, s, e in zip(in_shape, strides, extent):
            total = max(0, (math.ceil(size / s) - 1) * s + e - size)
            small, large = total // 2, total - total // 2
            # "same" puts the odd extra row/col after, "same_lower" before
            pads.append((small, large) if pad_type == "same" else (large, small))
    else:
        raise ValueError(f"unknown pad_type {pad_type!r}")
    if not ceil_mode:
        return pads
    # ceil_mode (as in PyTorch) adds a last window that may start in the right padding
    # but not beyond it; pad the extra on the right
    out = []
    for size, (before, after), s, e in zip(in_shape, pads, strides, extent):
        n_out = -(-(size + before + after - e) // s) + 1
        if (n_out - 1) * s >= size + before:
            n_out -= 1
        out.append((before, after + max(0, (n_out - 1) * s + e - (size + before + after))))
    return out


def _windows(x, kernel, strides, dilations):
    """View of x (N, C, *spatial), already padded, as windows (N, C, *out, *kernel)."""
    n = len(kernel)
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    view = sliding_window_view(x, extent, axis=tuple(range(2, 2 + n)))
    index = (slice(None), slice(None))
    index += tuple(slice(None, None, s) for s in strides) + tuple(slice(None, None, d) for d in dilations)
    return view[index]


def _conv(x, weight, bias=None, strides=None, pad_type="valid", pad=None, dilations=None, groups=1):
    n_sp = x.ndim - 2
    kernel = weight.shape[2:]
    strides = _ints(strides, [1] * n_sp)
    dilations = _ints(dilations, [1] * n_sp)
    pads = _spatial_pads(pad_type, pad, x.shape[2:], kernel, strides, dilations)
    x = np.pad(x, [(0, 0), (0, 0), *pads])
    win = _windows(x, kernel, strides, dilations)  # (N, C, *out, *K)
    n, c = x.shape[:2]
    out_sp = win.shape[2 : 2 + n_sp]
    g, c_out = int(groups), weight.shape[0]
    k_size, p_size = math.prod(kernel), math.prod(out_sp)
    # im2col per group: rows are output positions, columns (C/g * K) the window contents
    cols = win.reshape(n, g, c // g, p_size, k_size).transpose(0, 1, 3, 2, 4)
    cols = cols.reshape(n, g, p_size, (c // g) * k_size)
    w = weight.reshape(g, c_out // g, (c // g) * k_size).transpose(0, 2, 1)
    y = np.matmul(cols, w)  # (N, g, P, C_out/g)
    y = y.transpose(0, 1, 3, 2).reshape(n, c_out, *out_sp)
    if bias is not None:
        y = y + bias.reshape(c_out, *[1] * n_sp)
    return y


def _pool_setup(x, kernel_sizes, strides, pad_type, pad, ceil_mode):
    """Kernel, strides and (base, full) pads of a pooling op; full adds the ceil_mode extension."""
    n_sp = x.ndim - 2
    kernel, strides, ones = _ints(kernel_sizes), _ints(strides, [1] * n_sp), [1] * n_sp
    base = _spatial_pads(pad_type, pad, x.shape[2:], kernel, strides, ones)
    full = _spatial_pads(pad_type, pad, x.shape[2:], kernel, strides, ones, bool(ceil_mode))
    return kernel, strides, base, full


def _pooled(x, kernel, strides, pads, fill, reduce):
    x = np.pad(x, [(0, 0), (0, 0), *pads], constant_values=fill)
    win = _windows(x, kernel, strides, [1] * len(kernel))
    return reduce(win, axis=tuple(range(-len(kernel), 0)))


def _max_pool(x, kernel_sizes, strides=None, pad_type="valid", pad=None, ceil_mode=False):
    kernel, strides, _, full = _pool_setup(x, kernel_sizes, strides, pad_type, pad, ceil_mode)
    return _pooled(x, kernel, strides, full, -np.inf, np.max)


def _avg_pool(
    x, kernel_sizes, strides=None, pad_type="valid", pad=None, exclude_padding_from_average=False, ceil_mode=False
):
    kernel, strides, base, full = _pool_setup(x, kernel_sizes, strides, pad_type, pad, ceil_mode)
    total = _pooled(x, kernel, strides, full, 0.0, np.sum)
    # divide by the cells each window counts: the input, plus the explicit padding unless it
    # is excluded; the ceil_mode extension never counts (as in PyTorch)
    counted = np.ones((1, 1, *x.shape[2:]), np.float32)
    if exclude_padding_from_average:
        not_counted = full
    else:
        counted = np.pad(counted, [(0, 0), (0, 0), *base], constant_values=1.0)
        not_counted = [(0, f_after - b_after) for (_, f_after), (_, b_after) in zip(full, base)]
    count = _pooled(counted, kernel, strides, not_counted, 0.0, np.sum)
    return total / count


def _dot(x, w):
    """x (..., K) @ w (K, M). One 2-D GEMM: numpy's stacked matmul against a broadcast 2-D
    operand skips BLAS (~80x slower on a transposed weight), so the leading dims are folded."""
    return (x.reshape(-1, x.shape[-1]) @ w).reshape(*x.shape[:-1], w.shape[-1])


def _linear(x, weight, bias=None):
    y = _dot(x, weight.T)
    return y if bias is None else y + bias


def _matmul(x, y, transpose_x=False, transpose_y=False):
    if transpose_x:
        x = np.swapaxes(x, -1, -2)
    if transpose_y:
        y = np.swapaxes(y, -1, -2)
    if y.ndim == 2 and x.ndim > 2:
        return _dot(x, y)
    return np.matmul(x, y)


def _einsum(values, equation):
    # MIL einsum only has "nchw,nwhu->nchu" (any letters, rank 3 or 4, B/H broadcast):
    # a matmul over w with (n, h) as batch
    x, y = values
    out = np.matmul(np.swapaxes(x, -3, -2), np.swapaxes(y, -3, -2))
    return np.swapaxes(out, -3, -2)


def _layer_norm(x, axes=None, gamma=None, beta=None, epsilon=1e-5):
    axes = _axes(axes, x.ndim) or tuple(range(x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = np.square(x - mean).mean(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + epsilon)
    # gamma/beta have the shape of the normalised axes; put them back in place
    shape = [x.shape[i] if i in axes else 1 for i in range(x.ndim)]
    if gamma is not None:
        y = y * gamma.reshape(shape)
    if beta is not None:
        y = y + beta.reshape(shape)
    return y


def _channel_param(p, ndim):
    return p.reshape(-1, *[1] * (ndim - 2))


def _batch_norm(x, mean, variance, gamma=None, beta=None, epsilon=1e-5):
    y = (x - _channel_param(mean, x.ndim)) / np.sqrt(_channel_param(variance, x.ndim) + epsilon)
    if gamma is not None:
        y = y * _channel_param(gamma, x.ndim)
    if beta is not None:
        y = y + _channel_param(beta, x.ndim)
    return y


def _instance_norm(x, gamma=None, beta=None, epsilon=1e-5):
    spatial = tuple(range(2, x.ndim))
    mean = x.mean(axis=spatial, keepdims=True)
    var = np.square(x - mean).mean(axis=spatial, keepdims=True)
    y = (x - mean) / np.sqrt(var + epsilon)
    if gamma is not None:
        y = y * _channel_param(gamma, x.ndim)
    if beta is not None:
        y = y + _channel_param(beta, x.ndim)
    return y


def _l2_norm(x, epsilon=1e-6):
    # MIL l2_norm normalises over the last three dims, leading dims are batch
    axes = (-3, -2, -1)
    return x / np.sqrt(np.sum(x * x, axis=axes, keepdims=True) + epsilon)


def _gelu(x, mode="EXACT"):
    mode = str(mode)
    if mode == "EXACT":
        return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    if mode == "SIGMOID_APPROXIMATION":
        return x * _sigmoid_fn(1.702 * x)
    raise ValueError(f"unknown gelu mode {mode!r}")


def _softmax(x, axis=-1):
    return _softmax_fn(x, int(axis))


def _scaled_dot_product_attention(query, key, value, attn_mask=None):
    scores = np.matmul(query, np.swapaxes(key, -1, -2)) / math.sqrt(query.shape[-1])
    if attn_mask is not None:
        # a bool mask says which positions take part; a float mask is added
        scores = np.where(attn_mask, scores, -np.inf) if attn_mask.dtype == np.bool_ else scores + attn_mask
    return np.matmul(_softmax_fn(scores, -1), value)


def _cast(x, dtype):
    # the executor stores every result in the dtype the program declares for it
    # (fp16 only when emulating), which is all a cast does
    return x


def _const(val):
    return val


def _reshape(x, shape):
    # 0 copies the input's dim (iOS17 reshape)
    shape = [x.shape[i] if s == 0 else s for i, s in enumerate(_ints(shape))]
    return x.reshape(shape)


def _flatten2d(x, axis=1):
    axis = int(axis) % x.ndim
    return x.reshape(math.prod(x.shape[:axis]), -1)


def _transpose(x, perm):
    return np.transpose(x, _ints(perm))


def _squeeze(x, axes=None):
    return np.squeeze(x, axis=None if axes is None else tuple(_ints(axes)))


def _expand_dims(x, axes):
    return np.expand_dims(x, tuple(_ints(axes)))


def _tile(x, reps):
    return np.tile(x, _ints(reps))


def _concat(values, axis, interleave=False):
    # scalars concatenate as 1-element vectors (shape arithmetic of dynamic-shape programs)
    values = [np.atleast_1d(v) for v in values]
    axis = int(axis)
    if not interleave:
        return np.concatenate(values, axis=axis)
    # interleave: take one slice from each input in turn
    axis %= values[0].ndim
    stacked = np.stack(values, axis=axis + 1)
    shape = list(values[0].shape)
    shape[axis] *= len(values)
    return stacked.reshape(shape)


def _stack(values, axis):
    return np.stack(values, axis=int(axis))


def _split(x, axis, num_splits=None, split_sizes=None):
    axis = int(axis)
    if split_sizes is not None:
        bounds = np.cumsum(_ints(split_sizes))[:-1]
        return tuple(np.split(x, bounds, axis=axis))
    return tuple(np.split(x, int(num_splits), axis=axis))


def _slice_by_index(x, begin, end, stride=None, begin_mask=None, end_mask=None, squeeze_mask=None):
    n = x.ndim
    begin, end, stride = _ints(begin), _ints(end), _ints(stride, [1] * n)
    begin_mask = [False] * n if begin_mask is None else list(np.atleast_1d(begin_mask))
    end_mask = [False] * n if end_mask is None else list(np.atleast_1d(end_mask))
    squeeze_mask = [False] * n if squeeze_mask is None else list(np.atleast_1d(squeeze_mask))
    index = []
    for i in range(n):
        if squeeze_mask[i]:
            index.append(begin[i])
        else:
            # a masked bound means "from the start / to the end" in the stride's direction
            b = None if begin_mask[i] else begin[i]
            e = None if end_mask[i] else end[i]
            index.append(slice(b, e, stride[i]))
    return x[tuple(index)]


def _slice_by_size(x, begin, size):
    begin = [b % d for b, d in zip(_ints(begin), x.shape)]
    index = tuple(slice(b, None if s == -1 else b + s) for b, s in zip(begin, _ints(size)))
    return x[index]


def _gather(x, indices, axis=0, batch_dims=0, validate_indices=False):
    axis, batch_dims = int(axis) % x.ndim, int(batch_dims)
    indices = indices.astype(np.int64)
    if batch_dims == 0:
        return np.take(x, indices, axis=axis)
    # batch dims pair up x and indices; recurse over the leading one
    return np.stack([_gather(xi, ii, axis - 1, batch_dims - 1) for xi, ii in zip(x, indices)])


def _gather_along_axis(x, indices, axis=0, validate_indices=False):
    return np.take_along_axis(x, indices.astype(np.int64), axis=int(axis))


def _pad(x, pad, mode="constant", constant_val=0.0):
    p = _ints(pad)
    n = len(p) // 2
    widths = [(0, 0)] * (x.ndim - n) + [(p[2 * i], p[2 * i + 1]) for i in range(n)]
    mode = str(mode)
    if mode == "constant":
        return np.pad(x, widths, constant_values=constant_val)
    return np.pad(x, widths, mode={"reflect": "reflect", "replicate": "edge"}[mode])


def _shape(x):
    return np.array(x.shape, np.int32)


def _fill(shape, value=0.0):
    return np.full(_ints(shape), value)


def _select(cond, a, b):
    return np.where(cond, a, b)


def _constexpr_affine_dequantize(quantized_data, zero_point, scale, axis):
    # per-channel zero_point/scale run along `axis`
    shape = [1] * quantized_data.ndim
    shape[int(axis)] = -1
    zp = np.reshape(zero_point, shape) if np.ndim(zero_point) else zero_point
    sc = np.reshape(scale, shape) if np.ndim(scale) else scale
    return (quantized_data.astype(np.float32) - np.float32(zp)) * sc


def _constexpr_cast(source_val, output_dtype):
    return _cast(source_val, output_dtype)


def _pixel_shuffle(x, upscale_factor):
    n, c, h, w = x.shape
    f = int(upscale_factor)
    y = x.reshape(n, c // (f * f), f, f, h, w).transpose(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // (f * f), h * f, w * f)


def _pixel_unshuffle(x, downscale_factor):
    n, c, h, w = x.shape
    f = int(downscale_factor)
    y = x.reshape(n, c, h // f, f, w // f, f).transpose(0, 1, 3, 5, 2, 4)
    return y.reshape(n, c * f * f, h // f, w // f)


def _source_coords(size_in: int, size_out: int, scale: float, align_corners: bool, half_pixel: bool):
    """Where each output pixel samples the input, on one axis (MIL's three sampling modes)."""
    dst = np.arange(size_out, dtype=np.float64)
    if align_corners:
        src = dst * ((size_in - 1) / (size_out - 1) if size_out > 1 else 0.0)
    elif half_pixel:
        src = (dst + 0.5) / scale - 0.5
    else:
        src = dst / scale
    return np.clip(src, 0.0, size_in - 1)


def _interpolate_axis(x, axis: int, src):
    low = np.floor(src).astype(np.int64)
    high = np.minimum(low + 1, x.shape[axis] - 1)
    shape = [1] * x.ndim
    shape[axis] = -1
    weight = (src - low).reshape(shape).astype(x.dtype)
    return np.take(x, low, axis) * (1 - weight) + np.take(x, high, axis) * weight


def _upsample_bilinear(
    x, scale_factor_height=1.0, scale_factor_width=1.0, align_corners=False, half_pixel_centers=None
):
    half_pixel = (not align_corners) if half_pixel_centers is None else bool(half_pixel_centers)
    for axis, scale in ((-2, float(scale_factor_height)), (-1, float(scale_factor_width))):
        size_in = x.shape[axis]
        src = _source_coords(size_in, int(np.floor(size_in * scale)), scale, bool(align_corners), half_pixel)
        x = _interpolate_axis(x, x.ndim + axis, src)
    return x


def _upsample_nearest_neighbor(x, scale_factor_height=1, scale_factor_width=1):
    for axis, scale in ((-2, float(scale_factor_height)), (-1, float(scale_factor_width))):
        size_in = x.shape[axis]
        index = np.floor(np.arange(int(np.floor(size_in * scale))) / scale).astype(np.int64)
        x = np.take(x, np.minimum(index, size_in - 1), x.ndim + axis)
    return x


def _unary(fn: Callable) -> Callable:
    def op(x):
        return fn(x)

    return op


def _binary(fn: Callable) -> Callable:
    def op(x, y):
        return fn(x, y)

    return op


def _reduction(fn: Callable) -> Callable:
    def op(x, axes=None, keep_dims=False):
        return fn(x, axis=_axes(axes, x.ndim), keepdims=bool(keep_dims))

    return op


def _rsqrt(x, epsilon=1e-12):
    return 1.0 / np.sqrt(x + epsilon)


def _inverse(x, epsilon=1e-4):
    return 1.0 / (x + epsilon)


def _log(x, epsilon=1e-45):
    return np.log(x + epsilon)


def _clip(x, alpha, beta):
    return np.clip(x, alpha, beta)


def _leaky_relu(x, alpha=0.01):
    return np.where(x >= 0, x, alpha * x)


def _elu(x, alpha=1.0):
    return np.where(x > 0, x, alpha * (np.exp(x) - 1.0))


def _prelu(x, alpha):
    return np.where(x >= 0, x, _channel_param(alpha, x.ndim) * x)


def _thresholded_relu(x, alpha=1.0):
    return np.where(x >= alpha, x, 0.0)


def _sigmoid_hard(x, alpha=0.2, beta=0.5):
    return np.clip(alpha * x + beta, 0.0, 1.0)


def _clamped_relu(x, alpha=0.0, beta=6.0):
    return np.minimum(np.where(x >= 0, x, alpha * x), beta)


def _linear_activation(x, alpha, beta=0.0):
    return alpha * x + beta


def _scaled_tanh(x, alpha=1.0, beta=1.0):
    return alpha * np.tanh(beta * x)


OPS: dict[str, Callable[..., Any]] = {
    "const": _const,
    # linear algebra / convolution
    "conv": _conv,
    "linear": _linear,
    "matmul": _matmul,
    "einsum": _einsum,
    "scaled_dot_product_attention": _scaled_dot_product_attention,
    "avg_pool": _avg_pool,
    "max_pool": _max_pool,
    # normalisation
    "layer_norm": _layer_norm,
    "batch_norm": _batch_norm,
    "instance_norm": _instance_norm,
    "l2_norm": _l2_norm,
    "softmax": _softmax,
    # activations
    "relu": _unary(lambda x: np.maximum(x, 0.0)),
    "relu6": _unary(lambda x: np.clip(x, 0.0, 6.0)),
    "sigmoid": _unary(_sigmoid_fn),
    "silu": _unary(lambda x: x * _sigmoid_fn(x)),
    "tanh": _unary(np.tanh),
    "softplus": _unary(lambda x: np.logaddexp(0.0, x)),
    "softsign": _unary(lambda x: x / (1.0 + np.abs(x))),
    "gelu": _gelu,
    "erf": _unary(_erf),
    "leaky_relu": _leaky_relu,
    "elu": _elu,
    "prelu": _prelu,
    "thresholded_relu": _thresholded_relu,
    "sigmoid_hard": _sigmoid_hard,
    "clamped_relu": _clamped_relu,
    "linear_activation": _linear_activation,
    "scaled_tanh": _scaled_tanh,
    "clip": _clip,
    "pixel_shuffle": _pixel_shuffle,
    "pixel_unshuffle": _pixel_unshuffle,
    "upsample_bilinear": _upsample_bilinear,
    "upsample_nearest_neighbor": _upsample_nearest_neighbor,
    # elementwise unary
    "identity": _unary(lambda x: x),
    "abs": _unary(np.abs),
    "ceil": _unary(np.ceil),
    "floor": _unary(np.floor),
    "round": _unary(np.round),
    "sign": _unary(np.sign),
    "exp": _unary(np.exp),
    "exp2": _unary(np.exp2),
    "sqrt": _unary(np.sqrt),
    "square": _unary(np.square),
    "sin": _unary(np.sin),
    "cos": _unary(np.cos),
    "rsqrt": _rsqrt,
    "inverse": _inverse,
    "log": _log,
    "cast": _cast,
    # elementwise binary
    "add": _binary(np.add),
    "sub": _binary(np.subtract),
    "mul": _binary(np.multiply),
    "real_div": _binary(np.true_divide),
    "floor_div": _binary(np.floor_divide),
    "mod": _binary(np.mod),
    "pow": _binary(np.power),
    "maximum": _binary(np.maximum),
    "minimum": _binary(np.minimum),
    "equal": _binary(np.equal),
    "not_equal": _binary(np.not_equal),
    "less": _binary(np.less),
    "less_equal": _binary(np.less_equal),
    "greater": _binary(np.greater),
    "greater_equal": _binary(np.greater_equal),
    "logical_and": _binary(np.logical_and),
    "logical_or": _binary(np.logical_or),
    "logical_xor": _binary(np.logical_xor),
    "logical_not": _unary(np.logical_not),
    "select": _select,
    # reductions
    "reduce_mean": _reduction(np.mean),
    "reduce_sum": _reduction(np.sum),
    "reduce_max": _reduction(np.max),
    "reduce_min": _reduction(np.min),
    "reduce_prod": _reduction(np.prod),
    "reduce_sum_square": _reduction(lambda x, **kw: np.sum(x * x, **kw)),
    "reduce_l1_norm": _reduction(lambda x, **kw: np.sum(np.abs(x), **kw)),
    "reduce_l2_norm": _reduction(lambda x, **kw: np.sqrt(np.sum(x * x, **kw))),
    "reduce_log_sum": _reduction(lambda x, **kw: np.log(np.sum(x, **kw))),
    "reduce_log_sum_exp": _reduction(lambda x, **kw: np.logaddexp.reduce(x, **kw)),
    # shape / data movement
    "reshape": _reshape,
    "flatten2d": _flatten2d,
    "transpose": _transpose,
    "squeeze": _squeeze,
    "expand_dims": _expand_dims,
    "tile": _tile,
    "concat": _concat,
    "stack": _stack,
    "split": _split,
    "slice_by_index": _slice_by_index,
    "slice_by_size": _slice_by_size,
    "gather": _gather,
    "gather_along_axis": _gather_along_axis,
    "pad": _pad,
    "shape": _shape,
    "fill": _fill,
    # compressed weights (iOS16 constexpr ops)
    "constexpr_affine_dequantize": _constexpr_affine_dequantize,
    "constexpr_cast": _constexpr_cast,
}


# --------------------------------------------------------------------------------------
# Executor
# --------------------------------------------------------------------------------------


def _walk_ops(block):
    """All ops of a block, including those of nested blocks (control flow)."""
    for op in block.operations:
        yield op
        for inner in op.blocks:
            yield from _walk_ops(inner)


def _dtype_name(var) -> str:
    from coremltools.converters.mil.mil import types

    return types.builtin_to_string(var.dtype)


class MilExecutor:
    """Runs the main function of a MIL program with numpy.

    ``emulate_fp16=True`` rounds the result of every op the program types as fp16 to
    float16 (the program's own precision); ``False`` keeps those results in float32,
    which gives the fp32 reference of an fp16 program.
    """

    def __init__(self, program, *, emulate_fp16: bool):
        name = getattr(program, "default_function_name", "main")
        self.function = program.functions[name]
        self.emulate_fp16 = emulate_fp16
        unknown = sorted({op.op_type for op in _walk_ops(self.function) if op.op_type not in OPS})
        if unknown:
            raise UnsupportedMilOp(
                f"MIL program uses op types the numpy executor does not support: {', '.join(unknown)}"
            )
        self._ops = list(self.function.operations)
        # constants (weights included) never change between runs: materialise them once
        self._consts = {}
        for op in self._ops:
            if op.op_type == "const":
                self._consts[op.outputs[0].name] = self._store(op.outputs[0], op.val.val)
        self.uses_fp16 = any(_dtype_name(v) == "fp16" for op in self._ops for v in op.outputs)

    @property
    def input_vars(self):
        return dict(self.function.inputs)

    @property
    def output_vars(self):
        return list(self.function.outputs)

    def _store(self, var, value):
        """Convert an op result to the dtype the program declares for it."""
        dtype = _NP_DTYPES.get(_dtype_name(var))
        if dtype is None:  # strings and other non-numeric values
            return value
        if dtype is np.float16 and not self.emulate_fp16:
            dtype = np.float32
        return np.asarray(value).astype(dtype, copy=False)

    def _fetch(self, env, var):
        if isinstance(var, (list, tuple)):
            return [self._fetch(env, v) for v in var]
        value = env[var.name] if var.name in env else var.val
        # fp16 values are computed in float32 (and the result rounded again by _store)
        if isinstance(value, (np.ndarray, np.generic)) and value.dtype == np.float16:
            return value.astype(np.float32)
        return value

    def run(self, inputs: dict[str, np.ndarray], every_op: bool = False) -> dict[str, np.ndarray]:
        """The program's outputs; with every_op, every op result as well (by MIL variable name)."""
        env = dict(self._consts)
        for name, var in self.function.inputs.items():
            if name not in inputs:
                raise ValueError(f"missing input {name!r}; the program expects {list(self.function.inputs)}")
            value = np.asarray(inputs[name])
            expected = var.shape
            if len(expected) != value.ndim or any(
                isinstance(e, (int, np.integer)) and e != s for e, s in zip(expected, value.shape)
            ):
                raise ValueError(f"input {name!r} has shape {value.shape}, the program expects {expected}")
            env[name] = self._store(var, value)
        for op in self._ops:
            if op.op_type == "const":
                continue
            args = {key: self._fetch(env, var) for key, var in op.inputs.items()}
            try:
                result = OPS[op.op_type](**args)
            except Exception as e:
                raise RuntimeError(f"MIL op {op.op_type} ({op.name}) failed: {e}") from e
            results = result if isinstance(result, tuple) else (result,)
            for var, value in zip(op.outputs, results):
                env[var.name] = self._store(var, value)
        if every_op:
            return {
                var.name: env[var.name]
                for op in self._ops
                if op.op_type != "const"
                for var in op.outputs
                if isinstance(env.get(var.name), np.ndarray) and np.issubdtype(env[var.name].dtype, np.floating)
            }
        return {var.name: env[var.name] for var in self.function.outputs}


class CoreMLEmulatedSession(SessionBase):
    """Single-input, single-output embedding model from a ``.mlpackage``, run with numpy.

    ``emulate_fp16=None`` follows the program's dtypes (fp16 ops rounded to fp16);
    ``False`` computes everything in float32. Results are labelled "emulated": they are
    not from Core ML's own runtime.
    """

    def __init__(self, path: Path, *, emulate_fp16: bool | None = None):
        self.path = Path(path)
        program = load_program(self.path)
        # None and True coincide: rounding only ever applies to the ops typed fp16
        self.executor = MilExecutor(program, emulate_fp16=True if emulate_fp16 is None else emulate_fp16)
        inputs, outputs = self.executor.input_vars, self.executor.output_vars
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(
                f"{self.path}: expected one input and one output, got inputs {list(inputs)} "
                f"and outputs {[v.name for v in outputs]}"
            )
        self.input_name, self._input_var = next(iter(inputs.items()))
        self.output_name = outputs[0].name
        self.emulate_fp16 = self.executor.emulate_fp16
        self.uses_fp16 = self.executor.uses_fp16
        first = self._input_var.shape[0]
        # the fixed batch callers must feed (zoo's Session protocol); None when any batch works,
        # which includes batch-1 programs since run() loops over their samples
        self.batch = int(first) if isinstance(first, (int, np.integer)) and first != 1 else None

    def run(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        batch = self._input_var.shape[0]
        if isinstance(batch, (int, np.integer)) and batch != x.shape[0]:
            if batch != 1:
                raise ValueError(f"{self.path}: the model has a fixed batch of {batch}, got {x.shape[0]} samples")
            # fixed batch-1 model: one sample at a time
            return np.concatenate([self._run(x[i : i + 1]) for i in range(x.shape[0])])
        return self._run(x)

    def intermediates(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every op's result, one sample at a time (the executor runs op by op anyway)."""
        from zoo.runtimes.onnxruntime import batch_first

        runs = []
        for i in range(len(x)):
            values = self.executor.run({self.input_name: np.asarray(x[i : i + 1], np.float32)}, every_op=True)
            runs.append({n: v.astype(np.float32) for n, v in values.items() if v.ndim and v.shape[0] == 1})
        return batch_first(runs)

    def reference_twin(self):
        return CoreMLEmulatedSession(self.path, emulate_fp16=False) if self.uses_fp16 and self.emulate_fp16 else None

    def producers(self) -> dict[str, tuple[str, tuple[str, ...]]]:
        table = {}
        for op in self.executor._ops:
            inputs = tuple(
                v.name for var in op.inputs.values() for v in (var if isinstance(var, (list, tuple)) else [var])
            )
            for var in op.outputs:
                table[var.name] = (op.name, inputs)
        return table

    def _run(self, x: np.ndarray) -> np.ndarray:
        out = self.executor.run({self.input_name: x})[self.output_name]
        return out.astype(np.float32).reshape(x.shape[0], -1)
