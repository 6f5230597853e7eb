"""Build the embedding model of a spec: backbone (pooled features) → projection head → L2 normalize."""

from __future__ import annotations

import hashlib
import importlib
from typing import TYPE_CHECKING

from zoo.errors import ConversionError, UsageError
from zoo.registry import ModelSpec

if TYPE_CHECKING:
    import torch


def _seed_for(spec: ModelSpec) -> int:
    # Stable across runs and machines (unlike hash()), distinct per model.
    return int.from_bytes(hashlib.sha256(f"{spec.name}:{spec.seed}".encode()).digest()[:4], "little")


def _embedding_model_class():
    import torch
    from torch import nn

    class EmbeddingModel(nn.Module):
        """images (N, 3, H, W) → embeddings (N, D); L2-normalized unless `normalize` is False."""

        def __init__(self, backbone: nn.Module, head: nn.Module, normalize: bool):
            super().__init__()
            self.backbone = backbone
            self.head = head
            self.normalize = normalize

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            embedding = self.head(self.backbone(x))
            if self.normalize:
                # x / max(||x||, eps) written out: exports as plain ReduceL2/Max/Div on every target.
                norm = torch.linalg.vector_norm(embedding, ord=2, dim=-1, keepdim=True)
                embedding = embedding / torch.clamp(norm, min=1e-12)
            return embedding

    return EmbeddingModel


def _projection_head(in_features: int, widths: tuple[int, ...], dropout: float):
    from torch import nn

    layers: list[nn.Module] = []
    for i, width in enumerate(widths):
        layers.append(nn.Linear(in_features, width))
        if i < len(widths) - 1:  # Linear → GELU → Dropout between layers, none after the last
            layers += [nn.GELU(), nn.Dropout(dropout)]
        in_features = width
    return nn.Sequential(*layers) if layers else nn.Identity()


def check_input_size(spec: ModelSpec, backbone) -> None:
    """Refuse an input size the architecture cannot take, saying why and what would work: the model's
    own size and each of its per-target sizes (target_input_sizes), all in one error."""
    patch = getattr(getattr(backbone, "patch_embed", None), "patch_size", None)
    if patch is None:
        return
    p = patch[0] if isinstance(patch, (tuple, list)) else int(patch)
    sizes = [(spec.input_size, "")] + [(n, f" for target {t!r}") for t, n in sorted(spec.target_input_sizes.items())]
    problems, hints = [], []
    for size, where in sizes:
        if size % p:
            problems.append(f"input size {size}{where} is not divisible by the patch size {p} of {spec.architecture}")
            lower, upper = size // p * p, (size // p + 1) * p
            hints.append((f"use {lower} or {upper}" if lower else f"use {upper}") + where)
    if problems:
        raise UsageError(f"model {spec.name!r}: " + "; ".join(problems), hint="; ".join(hints))


def _timm_backbone(spec: ModelSpec):
    from zoo._torchvision_compat import import_timm

    timm = import_timm()
    name = spec.timm_name
    if not timm.is_model(name):
        from zoo.errors import unknown_name

        raise unknown_name("timm architecture", name, timm.list_models())
    kwargs = {"pretrained": False, "num_classes": 0, "exportable": True, **spec.architecture_args}
    try:
        # ViT-style models fix their position embeddings to the input size at creation;
        # CNNs take any size and refuse the keyword.
        return timm.create_model(name, img_size=spec.input_size, **kwargs)
    except TypeError:
        pass
    try:
        return timm.create_model(name, **kwargs)
    except TypeError as exc:
        raise UsageError(
            f"model {spec.name!r}: timm {name} refuses architecture_args {spec.architecture_args}: {exc}"
        ) from exc


def _factory_backbone(spec: ModelSpec):
    module_name, _, func_name = spec.architecture.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"model {spec.name!r}: cannot load factory {spec.architecture}: {exc}") from exc
    try:
        return factory(input_size=spec.input_size, **spec.architecture_args)
    except TypeError as exc:
        if not spec.architecture_args:
            raise  # the factory's own error, not a refused keyword
        raise UsageError(
            f"model {spec.name!r}: factory {spec.architecture} refuses architecture_args {spec.architecture_args}: {exc}"
        ) from exc


def build_backbone(spec: ModelSpec):
    if spec.architecture_kind == "timm":
        return _timm_backbone(spec)
    if spec.architecture_kind == "factory":
        return _factory_backbone(spec)
    raise UsageError(f"model {spec.name!r} comes from an ONNX file; it has no torch backbone")


def probe_feature_size(backbone, input_size: int) -> int:
    """The pooled output width, from a forward pass (timm's num_features is not always it)."""
    import torch

    backbone.eval()
    with torch.no_grad():
        out = backbone(torch.zeros(1, 3, input_size, input_size))
    if out.ndim != 2:
        raise UsageError(f"the backbone returns shape {tuple(out.shape)}; zoo needs pooled features (N, C)")
    return int(out.shape[1])


def build_model(spec: ModelSpec, *, normalize: bool | None = None, load_checkpoint: bool = True):
    """The spec's embedding model in eval mode, with its checkpoint (or seeded weights) loaded."""
    import torch

    from zoo.checkpoints import load_into

    normalize = spec.normalize if normalize is None else normalize
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed_for(spec))
        try:
            backbone = build_backbone(spec)
            check_input_size(spec, backbone)
            features = probe_feature_size(backbone, spec.input_size)
        except (UsageError, ConversionError):
            raise
        except Exception as exc:
            raise UsageError(
                f"model {spec.name!r}: {spec.architecture} cannot run at {spec.input_size} px: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ) from exc
        head = _projection_head(features, spec.head, spec.head_dropout)
        if not spec.head and features != spec.embedding_dim:
            raise UsageError(
                f"model {spec.name!r}: the backbone outputs {features} features but embedding_dim is "
                f"{spec.embedding_dim}",
                hint=f"add a projection head, e.g. head = [{spec.embedding_dim}]",
            )
        model = _embedding_model_class()(backbone, head, normalize)
    if spec.checkpoint is not None and load_checkpoint:
        load_into(model, spec.checkpoint)
    return model.eval()
