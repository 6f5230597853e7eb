"""Let timm import when torchvision's C extension cannot load.

timm imports torchvision, whose import registers fake kernels for `torchvision::nms`. When the
installed torchvision wheel was built for a different torch (e.g. a CUDA wheel beside CPU torch),
its `_C` extension fails to load, those operators are never defined and `import timm` dies with
"operator torchvision::nms does not exist". zoo uses no torchvision operator, so in exactly that
case we define the two schemas torchvision's import needs. When the extension loads, we do nothing.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_library = None  # keeps the schema definitions alive


def _extension_loads() -> bool:
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # no torchvision at all: nothing to patch, the import error will be clear
    candidates = sorted(Path(spec.submodule_search_locations[0]).glob("_C*.so")) + sorted(
        Path(spec.submodule_search_locations[0]).glob("_C*.pyd")
    )
    if not candidates:
        return True
    try:
        torch.ops.load_library(str(candidates[0]))
    except OSError:
        return False
    return True


def ensure_torchvision() -> bool:
    """Make `import timm` work. Returns True when the operator schemas had to be defined."""
    global _library
    if "torchvision" in sys.modules or _library is not None:
        return _library is not None
    if _extension_loads():
        return False
    import torch

    _library = torch.library.Library("torchvision", "DEF")
    _library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _library.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    return True


def import_timm():
    ensure_torchvision()
    import timm

    return timm
