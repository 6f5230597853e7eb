"""Where parity breaks: a layer-by-layer divergence report, named in the source model's module paths.

`zoo diagnose OUTPUT_DIR` (and every conversion whose parity vs source fails) runs the source model
with a hook on each module and the artifact with its intermediate tensors exposed (each runtime's
`SessionBase.intermediates`: ONNX Runtime, OpenVINO, LiteRT, zoo's Core ML and Hailo emulations),
pairs them by value (zoo.diagnose.pairing), and reports per layer the cosine and relative error on
the parity inputs where the artifact did worst, the layer where the error starts, and the layers
that add most of it. `zoo diagnose --suggest` re-quantizes an int8 artifact with those layers left
in float (the model's `float_modules` knob) and measures what that buys (zoo.diagnose.suggest).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from zoo.diagnose.layers import Layer, first_jump, layer_table, top_contributors
from zoo.diagnose.pairing import module_taps, pair
from zoo.fidelity import Check, Fidelity, Status
from zoo.validators.metrics import cosine_rows

# pairing on the artifact itself (no fp32 twin): its own divergence must not hide a layer
SELF_MATCH_COSINE, SELF_MATCH_ERROR = 0.9, 0.5
DEFAULT_INPUTS = 4
FUSION_GAP = 0.005  # final cosine with every tensor exposed above the artifact's own by more than this


@dataclass
class Diagnosis:
    artifact: str
    runtime: str
    fidelity: Fidelity
    inputs: list[str]  # the parity inputs compared (the artifact's worst first)
    paired_on: str  # the fp32 artifact the modules were paired on
    modules: int  # module calls in the source model
    layers: list[Layer]
    start: int | None  # index of the layer where the divergence starts
    top: list[int]  # indices of the layers adding most error
    final_cosine_min: float  # the artifact's own output vs the source's, on these inputs
    tapped_final_cosine_min: float | None  # the same with the intermediate tensors exposed
    unmapped: str = ""  # what could not be mapped, in words
    suggestions: list[dict] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict) -> Diagnosis:
        layers = [Layer(**{**r, "shape": tuple(r["shape"]), "hidden": tuple(r.get("hidden", ()))}) for r in d["layers"]]
        index = {r.module: i for i, r in enumerate(layers)}
        return cls(
            artifact=d["artifact"],
            runtime=d["runtime"],
            fidelity=Fidelity(d["fidelity"]),
            inputs=list(d["inputs"]),
            paired_on=d["paired_on"],
            modules=d["source_module_calls"],
            layers=layers,
            start=index.get(d["divergence_starts_at"]),
            top=[index[m] for m in d["top_contributors"] if m in index],
            final_cosine_min=d["final_cosine_min"],
            tapped_final_cosine_min=d.get("tapped_final_cosine_min"),
            unmapped=d.get("unmapped", ""),
            suggestions=list(d.get("suggestions", [])),
        )

    @property
    def fused_divergence(self) -> bool:
        """The artifact computes differently with its tensors exposed: what breaks it is how the runtime
        compiles the whole graph (fused kernels), which exposing every tensor prevents."""
        tapped = self.tapped_final_cosine_min
        # and exposing the tensors recovers at least half of what is lost: a small gap on a large loss is noise
        gap = max(FUSION_GAP, (1 - self.final_cosine_min) / 2)
        return tapped is not None and tapped - self.final_cosine_min > gap

    @property
    def start_module(self) -> str | None:
        return None if self.start is None else self.layers[self.start].module

    def to_dict(self) -> dict:
        return {
            "artifact": self.artifact,
            "runtime": self.runtime,
            "fidelity": str(self.fidelity),
            "inputs": self.inputs,
            "paired_on": self.paired_on,
            "source_module_calls": self.modules,
            "paired_layers": len(self.layers),
            "unmapped": self.unmapped,
            "divergence_starts_at": self.start_module,
            "divergence_starts_after": list(self.layers[self.start].hidden) if self.start is not None else [],
            "top_contributors": [self.layers[i].module for i in self.top],
            "fused_divergence": self.fused_divergence,
            "final_cosine_min": self.final_cosine_min,
            "tapped_final_cosine_min": self.tapped_final_cosine_min,
            "layers": [row.to_dict() for row in self.layers],
            "suggestions": self.suggestions,
        }

    def summary(self) -> str:
        if self.fused_divergence:
            return (
                f"{self.artifact}: the runtime's fused graph diverges (min cosine {self.final_cosine_min:.4f} as "
                f"compiled, {self.tapped_final_cosine_min:.4f} with every tensor exposed); in the exposed graph the "
                f"error starts at {self.start_module}"
            )
        if self.start is None:
            return f"{self.artifact}: no layer adds error ({len(self.layers)} layers paired)"
        row = self.layers[self.start]
        return (
            f"{self.artifact}: divergence starts at {row.label} (cosine {row.cosine_min:.4f}, relative error "
            f"{row.relative_error:.4f}); top: {', '.join(self.layers[i].module for i in self.top[:3])}"
        )

    def to_markdown(self, every_layer: bool = False) -> str:
        """The summary and the layers that matter (where it starts, the top contributors); every
        paired layer with every_layer."""
        lines = [
            f"### Divergence by layer: {self.artifact} ({self.runtime}, {self.fidelity})",
            "",
            f"- inputs: {len(self.inputs)} parity inputs where the artifact did worst ({', '.join(self.inputs)})",
            f"- paired on {self.paired_on}: {len(self.layers)} of {self.modules} module calls "
            f"paired with an artifact tensor{'; ' + self.unmapped if self.unmapped else ''}",
            f"- final output vs source: min cosine {self.final_cosine_min:.6f}"
            + (
                f" (with every tensor exposed: {self.tapped_final_cosine_min:.6f})"
                if self.tapped_final_cosine_min is not None
                else ""
            ),
            f"- **divergence starts at `{self.layers[self.start].label}`**"
            if self.start is not None
            else "- no layer adds error",
            *(
                [
                    "- **the runtime's fused graph diverges**: with every tensor exposed the artifact computes "
                    f"{self.tapped_final_cosine_min:.4f}, as compiled {self.final_cosine_min:.4f} — the layers below "
                    "describe the exposed graph; the loss is in kernels the runtime fuses when nothing is exposed"
                ]
                if self.fused_divergence
                else []
            ),
            "",
            "| # | module | cosine min | cosine mean | relative error | added | tensor |",
            "|---|---|---|---|---|---|---|",
        ]
        shown = sorted(set(self.top) | ({self.start} if self.start is not None else set()))
        if every_layer or not shown:
            shown = list(range(len(self.layers)))
        for i in shown:
            r = self.layers[i]
            mark = " ← starts" if i == self.start else ""
            lines.append(
                f"| {i} | `{r.label}`{mark} | {r.cosine_min:.6f} | {r.cosine_mean:.6f} | {r.relative_error:.5f} "
                f"| {r.added:.5f} | `{r.tensor}` |"
            )
        if self.suggestions:
            from zoo.diagnose.suggest import best_fix

            fix = best_fix(self.suggestions)
            lines += [
                "",
                f"**Measured fix** ({fix['fidelity']}): {fix['summary']}  \n`{fix['knob']}`"
                if fix
                else f"No try of the {len(self.suggestions)} below reaches the rule.",
            ]
        for s in self.suggestions:
            lines += ["", f"- suggestion ({s['fidelity']}): {s['summary']}", f"  knob: `{s['knob']}`"]
        return "\n".join(lines) + "\n"


class NotExposed(Exception):
    """The artifact's runtime cannot give its intermediate tensors (e.g. an .ort file)."""


def fp32_twin(name: str, sessions: dict) -> str | None:
    """The fp32 artifact an int8 one was quantized from (the quantizers keep its tensor names)."""
    if "int8" not in name:
        return None
    for other in sessions:
        if other != name and "int8" not in other and sessions[other] is not None:
            return other
    return None


def diagnose_session(
    name: str,
    session,
    runtime,
    torch_model,
    x: np.ndarray,
    labels: list[str],
    twin: tuple[str, object] | None = None,
) -> Diagnosis:
    """The per-layer table of one artifact's session on the inputs x (NCHW, as validation feeds it)."""
    from zoo.runtimes import run_in_batches

    exposed = session.intermediates(x)
    if not exposed:
        raise NotExposed(f"{runtime.name} cannot expose the intermediate tensors of {name}")
    taps, final = module_taps(torch_model, x)
    reference_session = None if twin is not None else session.reference_twin()
    if twin is not None:
        paired_on, reference, bounds = twin[0], twin[1].intermediates(x), ()
    elif reference_session is not None:
        paired_on, reference, bounds = f"{name} computed in float32", reference_session.intermediates(x), ()
    else:
        paired_on, reference, bounds = f"{name} itself (no fp32 twin)", exposed, (SELF_MATCH_COSINE, SELF_MATCH_ERROR)
    pairs = pair(taps, reference, *bounds)
    rows = layer_table(taps, pairs, exposed)
    out = run_in_batches(session, x).reshape(len(x), -1)
    final = final.reshape(len(x), -1)
    unmapped = []
    missing = len(pairs) - len(rows)
    if missing:
        unmapped.append(f"{missing} paired tensors are not in {name} (renamed or fused by its toolchain)")
    last = list(exposed.values())[-1]  # the artifact's output, computed with every tensor exposed
    tapped = round(float(cosine_rows(final, last.reshape(len(x), -1)).min()), 6) if last.size == final.size else None
    return Diagnosis(
        artifact=name,
        runtime=runtime.name,
        fidelity=runtime.fidelity,
        inputs=list(labels),
        paired_on=paired_on,
        modules=len(taps),
        layers=rows,
        start=first_jump(rows),
        top=top_contributors(rows),
        final_cosine_min=round(float(cosine_rows(final, out).min()), 6),
        tapped_final_cosine_min=tapped,
        unmapped="; ".join(unmapped),
    )


def worst_inputs(per_sample_cosine: list[float] | None, total: int, count: int) -> list[int]:
    """The indices of the `count` inputs the artifact did worst on (the first ones without figures)."""
    if not per_sample_cosine or len(per_sample_cosine) != total:
        return list(range(min(count, total)))
    return sorted(np.argsort(np.asarray(per_sample_cosine))[:count].tolist())


def model_modules(torch_model) -> set[str]:
    return {name for name, _ in torch_model.named_modules() if name}


def check_float_modules(torch_model, modules: list[str]) -> None:
    """Every module path names a module of the model, else a usage error with the nearest path."""
    from difflib import get_close_matches

    from zoo.errors import UsageError

    known = model_modules(torch_model)
    unknown = [m for m in modules if m not in known]
    if unknown:
        near = get_close_matches(unknown[0], sorted(known), n=1)
        raise UsageError(
            f"float_modules names {', '.join(unknown)}, which the model does not have",
            hint=f"did you mean {near[0]!r}?" if near else "module paths as torch's named_modules() gives them",
        )


def module_nodes(torch_model, x: np.ndarray, session, modules: list[str]) -> dict[str, list[str]]:
    """{module path: the artifact's nodes that compute it} — a module's nodes are those its output
    depends on that no tensor finished before the module started depends on. For `float_modules`:
    a quantizer leaves these nodes in float."""
    check_float_modules(torch_model, modules)
    taps, _ = module_taps(torch_model, x)
    reference = session.intermediates(x)
    producers = session.producers()
    pairs = {p.module: p for p in pair(taps, reference)}
    activations = computed_from(set(reference), producers)
    result: dict[str, list[str]] = {}
    for module in modules:
        calls = [t for t in taps if t.module == module or t.module.startswith(module + "#")]
        nodes: list[str] = []
        for tap in calls:
            paired = pairs.get(tap.module) or _deepest_paired(tap.module, taps, pairs)
            if paired is None:
                continue
            before = {pairs[t.module].tensor for t in taps[: tap.started] if t.module in pairs}
            for node in _nodes_between(producers, before, paired.tensor, activations):
                if node not in nodes:
                    nodes.append(node)
        result[module] = nodes
    return result


def _deepest_paired(module, taps, pairs):
    """A module whose own output was left unpaired (it equals a child's): the last paired call inside it."""
    inside = [t for t in taps if t.module.startswith(module + ".") and t.module in pairs]
    return pairs[inside[-1].module] if inside else None


def computed_from(seeds: set[str], producers: dict) -> set[str]:
    """`seeds` and every tensor computed from one of them. The exposed tensors are only those with the
    batch axis first; what attention computes between them (heads first, tokens first) is reached here."""
    consumers: dict[str, list[str]] = {}
    for tensor, (_node, inputs) in producers.items():
        for i in inputs:
            consumers.setdefault(i, []).append(tensor)
    found, todo = set(seeds), list(seeds)
    while todo:
        for t in consumers.get(todo.pop(), ()):
            if t not in found:
                found.add(t)
                todo.append(t)
    return found


def _nodes_between(producers: dict, stop: set[str], tensor: str, activations: set[str]) -> list[str]:
    """The nodes `tensor` is computed by, walking back through activations (not weights or shapes)
    until a tensor in `stop` (or the graph's input)."""
    seen, nodes, todo = set(), [], [tensor]
    while todo:
        t = todo.pop()
        if t in seen or t in stop or t not in producers or t not in activations:
            continue
        seen.add(t)
        node, inputs = producers[t]
        if node not in nodes:
            nodes.append(node)
        todo.extend(inputs)
    return nodes


def float_module_nodes(ctx, open_session) -> dict[str, list[str]]:
    """{module: nodes} of the modules the model's `float_modules` names for this target, in the graph
    the session `open_session()` gives runs (the int8 step's fp32 input); recorded in the manifest.
    Empty when none are named — then no session is opened."""
    from zoo.errors import ConversionError, UsageError

    modules = list(ctx.model.float_modules.get(ctx.target.name, []))
    if not modules:
        return {}
    if ctx.torch_model is None:
        raise UsageError(f"float_modules of {ctx.model.name} name torch modules; its source is not a torch model")
    mapping = module_nodes(ctx.torch_model, ctx.sample_inputs[:DEFAULT_INPUTS], open_session(), modules)
    lost = [m for m, nodes in mapping.items() if not nodes]
    if lost:
        raise ConversionError(
            f"float_modules: no node of the {ctx.target.name} graph computes {', '.join(lost)} "
            "(its output was not found among the graph's tensors)",
            hint="zoo diagnose lists the modules it can pair with the graph",
        )
    ctx.records["float_modules"] = mapping
    return mapping


SPEED_ROW_COST = "measured in the row 'int8 speedup vs fp32' (the int8 artifact with these modules in float)"


def float_modules_check(mapping: dict[str, list[str]], *, artifact: str, kept_as: str, cost: str) -> Check:
    """The report row of a fallback: which modules the int8 artifact keeps out of int8 (`kept_as`: float,
    16 bits) and where its cost in speed is reported. Never gated, never hidden in the manifest only."""
    nodes = sum(len(v) for v in mapping.values())
    return Check(
        "modules kept out of int8 (float_modules)",
        Status.INFO,
        Fidelity.MEASURED,
        value=f"{len(mapping)} module(s), {nodes} node(s)",
        threshold="not gated: the model's declared fallback",
        artifact=artifact,
        detail=f"kept {kept_as}: {', '.join(mapping)}; cost: {cost}",
        data={"modules": list(mapping), "nodes": nodes, "kept_as": kept_as},
    )


def nodes_kept_in_float(ctx, open_session, artifact: str) -> list[str]:
    """For an int8 step that leaves nodes in float: the nodes of the model's float_modules for this target
    (float_module_nodes), with the report row naming them, its cost in the step's measured speed row.
    [] when the model names none."""
    mapping = float_module_nodes(ctx, open_session)
    kept = [n for nodes in mapping.values() for n in nodes]
    if kept:
        ctx.checks.append(float_modules_check(mapping, artifact=artifact, kept_as="in float", cost=SPEED_ROW_COST))
    return kept
