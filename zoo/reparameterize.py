"""The deployment form of a torch model: re-parameterizable blocks fused before any export.

FastViT, MobileOne, RepViT, RepVGG, RepGhost … train with parallel branches (k×k conv, 1×1 conv, BN
identity, each with its own BatchNorm) that are meant to be folded into one conv for inference. Exported
unfused, every branch is a separate tensor to quantize, and int8 loses what the folded conv keeps. timm
does the folding with `reparameterize_model` (each module's `fuse()`, `reparameterize()` or
`switch_to_deploy()`); a user's factory model that has those methods gets the same treatment.

The folded model must compute what the trained one does: both run on the conversion's sample inputs and
the folded one is used only if every embedding keeps cosine ≥ MIN_COSINE; otherwise the model is exported
as trained, and the report says why. Parity vs source is always measured against the trained form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from zoo.fidelity import Check, Fidelity, Status
from zoo.progress import QUIET, Progress

FUSE_METHODS = ("fuse", "reparameterize", "switch_to_deploy")
MIN_COSINE = 0.99999
CHECK_NAME = "re-parameterized for deployment (fused branches vs the trained form, torch)"


@dataclass(frozen=True)
class DeploymentForm:
    model: Any  # what the converters export: the folded model, or the trained one
    fused: tuple[str, ...]  # outermost module paths that were folded (empty: nothing to fold, or refused)
    check: Check | None  # the report's row (None: nothing in the model folds)

    def record(self) -> dict:
        return {"fused_modules": list(self.fused), "check": self.check.to_dict() if self.check else None}


def fusable_modules(model) -> list[str]:
    """Outermost submodules with a fuse/reparameterize/switch_to_deploy method (the root is never one)."""
    found: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(f + ".") for f in found):
            continue
        if any(callable(getattr(module, m, None)) for m in FUSE_METHODS):
            found.append(name)
    return found


def deployment_form(model, sample_inputs: np.ndarray, progress: Progress = QUIET) -> DeploymentForm:
    """`model` with its re-parameterizable blocks folded, checked on `sample_inputs` (NCHW float32); a
    model with nothing to fold (or none: an ONNX source) is returned as it is, with no row."""
    fusable = fusable_modules(model) if model is not None else []
    if not fusable:
        return DeploymentForm(model, (), None)
    with progress.step("re-parameterizing for deployment (folding training-time branches)"):
        return _folded(model, fusable, sample_inputs)


def _folded(model, fusable: list[str], sample_inputs: np.ndarray) -> DeploymentForm:
    from zoo._torchvision_compat import import_timm
    from zoo.pipeline import embed_torch
    from zoo.validators.metrics import cosine_rows

    import_timm()
    from timm.utils.model import reparameterize_model

    def refused(detail: str) -> DeploymentForm:
        row = Check(CHECK_NAME, Status.INFO, Fidelity.MEASURED, value="not applied", detail=detail)
        return DeploymentForm(model, (), row)

    try:
        folded = reparameterize_model(model, inplace=False).eval()
        cosines = cosine_rows(embed_torch(model, sample_inputs), embed_torch(folded, sample_inputs))
    except Exception as exc:  # a user's fuse() that fails: export the model as trained, say so
        return refused(f"folding {', '.join(fusable[:3])} failed ({type(exc).__name__}: {exc}); exported as trained")
    worst = float(np.min(cosines))
    if not worst >= MIN_COSINE:
        return refused(f"the folded model drifts (min cosine {worst:.6f} < {MIN_COSINE}); exported as trained")
    row = Check(
        CHECK_NAME,
        Status.PASS,
        Fidelity.MEASURED,
        value=round(worst, 7),
        threshold=f"min cosine ≥ {MIN_COSINE}",
        detail=f"{len(fusable)} modules folded for export (e.g. {', '.join(fusable[:3])}); "
        f"{len(sample_inputs)} sample inputs",
        data={"fused_modules": fusable, "per_sample": [round(float(c), 7) for c in cosines]},
    )
    return DeploymentForm(folded, tuple(fusable), row)
