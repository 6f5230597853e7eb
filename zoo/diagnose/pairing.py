"""Which artifact tensor is which torch module's output — found by the numbers, not by the names.

Exporters keep the module path in a node's name only sometimes (torch's legacy exporter does,
`/backbone/stages/stages.0/…/Conv`; the dynamo exporter's scopes do not survive onnxslim; LiteRT and
Core ML rename everything). So zoo pairs on values: run the source model with a hook on every module,
run an fp32 artifact with every intermediate tensor exposed, and pair each module's output with the
artifact tensor of the same size whose values match it (cosine ≥ MATCH_COSINE), trying the layouts an
exporter produces (as is, channels-last). An int8 artifact is paired through its fp32 twin: the
quantizers keep the float graph's tensor names.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MATCH_COSINE = 0.999  # an fp32 artifact's tensor and its module agree to float rounding
# cosine is blind to scale: a layer scale (x · γ) would pair with its own input without a bound on size
MATCH_RELATIVE_ERROR = 0.01
SAMPLE_POSITIONS = 2048  # values per sample compared (a fixed random subset: pairing stays cheap)


@dataclass(frozen=True)
class ModuleTap:
    """One call of one torch module on the inputs: its output (batch first)."""

    module: str  # module path, "#2" appended for a module's second call
    output: np.ndarray
    started: int  # how many recorded calls had finished when this one started


@dataclass(frozen=True)
class Pairing:
    module: str
    tensor: str  # the artifact's tensor name
    layout: str  # "as is" or "channels-last" (the artifact's tensor is NHWC of the module's NCHW)
    match_cosine: float  # how well the fp32 reference tensor matched the module's output


def module_taps(model, x: np.ndarray) -> tuple[list[ModuleTap], np.ndarray]:
    """Every module's output on x, in the order the calls finish; and the model's output."""
    import torch

    taps: list[ModuleTap] = []
    calls: dict[str, int] = {}
    starts: dict[str, list[int]] = {}
    handles = []

    def first_tensor(value):
        if isinstance(value, torch.Tensor):
            return value
        if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
            return value[0]
        return None

    def start(name):
        def record(module, args):
            starts.setdefault(name, []).append(len(taps))

        return record

    def hook(name):
        def record(module, args, output):
            started = starts[name].pop()
            out = first_tensor(output)
            if out is None or not out.is_floating_point() or out.ndim == 0 or out.shape[0] != len(x):
                return
            calls[name] = calls.get(name, 0) + 1
            label = name if calls[name] == 1 else f"{name}#{calls[name]}"
            taps.append(ModuleTap(label, out.detach().float().numpy().copy(), started))

        return record

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_pre_hook(start(name)))
            handles.append(module.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            final = model(torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy()
    finally:
        for handle in handles:
            handle.remove()
    return taps, final


def _positions(shape: tuple[int, ...]) -> np.ndarray:
    size = int(np.prod(shape))
    rng = np.random.default_rng(size)  # the same positions for every tensor of this size
    return np.sort(rng.choice(size, min(size, SAMPLE_POSITIONS), replace=False))


def layouts(module_shape: tuple[int, ...], tensor_shape: tuple[int, ...]) -> list[str]:
    """The layouts under which a tensor of `tensor_shape` (per sample) can hold a module output of `module_shape`."""
    found = []
    squeezed_m = tuple(d for d in module_shape if d != 1)
    squeezed_t = tuple(d for d in tensor_shape if d != 1)
    if squeezed_m == squeezed_t:
        found.append("as is")
    if len(module_shape) == 3 and tuple(tensor_shape) == (module_shape[1], module_shape[2], module_shape[0]):
        found.append("channels-last")
    return found


def to_module_layout(value: np.ndarray, module_shape: tuple[int, ...], layout: str) -> np.ndarray:
    """An artifact tensor (batch first) as the module's (N, *module_shape)."""
    n = len(value)
    if layout == "channels-last":
        return np.ascontiguousarray(
            value.reshape(n, module_shape[1], module_shape[2], module_shape[0]).transpose(0, 3, 1, 2)
        )
    return value.reshape(n, *module_shape)


def per_sample(value: np.ndarray, n: int) -> tuple[int, ...] | None:
    """The per-sample shape of a batch-first tensor, or None when it is not batch first."""
    if value.ndim == 0 or value.shape[0] != n:
        return None
    return tuple(value.shape[1:])


def relative_error(want: np.ndarray, got: np.ndarray) -> float:
    """‖got − want‖ / ‖want‖, in float64."""
    scale = np.linalg.norm(want.astype(np.float64).ravel())
    return float(np.linalg.norm((got.astype(np.float64) - want).ravel()) / max(scale, 1e-30))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    if denom == 0:
        return 1.0 if not a.any() and not b.any() else 0.0
    return float(a @ b / denom)


def pair(
    taps: list[ModuleTap],
    reference: dict[str, np.ndarray],
    minimum: float = MATCH_COSINE,
    max_error: float = MATCH_RELATIVE_ERROR,
) -> list[Pairing]:
    """Each module's output paired with the reference artifact's tensor that holds it, or left out.

    Among the tensors that match, the best match wins, the first one the artifact computes among equals
    (an Identity after it holds the same values). A tensor goes to one module only: a module whose
    output is an earlier module's tensor (a parent ending in its last child) is left out, so the
    earlier, deeper name is kept."""
    n = len(taps[0].output) if taps else 0
    order = list(reference)
    by_size: dict[int, list[str]] = {}
    for name in order:
        shape = per_sample(reference[name], n)
        if shape is not None and reference[name].dtype.kind == "f":
            by_size.setdefault(int(np.prod(shape)), []).append(name)
    cache: dict[tuple, np.ndarray] = {}
    taken: set[str] = set()
    pairs = []
    for tap in taps:
        shape = tuple(tap.output.shape[1:])
        size = int(np.prod(shape))
        pos = _positions(shape)
        want = tap.output.reshape(n, -1)[:, pos]
        if not np.isfinite(want).all() or not want.any():
            continue
        best = None
        for name in by_size.get(size, []):
            if name in taken:
                continue
            for layout in layouts(shape, per_sample(reference[name], n)):
                key = (name, layout, shape)
                if key not in cache:
                    cache[key] = to_module_layout(reference[name], shape, layout).reshape(n, -1)[:, pos]
                score = _cosine(want, cache[key])
                if score < minimum or relative_error(want, cache[key]) > max_error:
                    continue
                if best is None or score > best[2] + 1e-7:
                    best = (name, layout, score)
        if best is None:
            continue
        taken.add(best[0])
        pairs.append(Pairing(tap.module, best[0], best[1], round(best[2], 7)))
    return pairs
