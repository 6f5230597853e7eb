"""Architectures of reference models that timm has no registered name for (registry `architecture =
"zoo.reference_models.architectures:NAME"`; each takes the input size, plus the model's
architecture_args, and returns a backbone)."""

from __future__ import annotations

from functools import partial

from zoo._torchvision_compat import import_timm


def conv_stem_vit(
    input_size: int,
    widths: tuple[int, ...] = (16, 32, 64, 128),
    embed_dim: int = 128,
    depth: int = 4,
    num_heads: int = 4,
    **vit_options,
):
    """timm's VisionTransformer (class token, learned position embeddings, MLP ratio 4) whose tokens come
    from a stem of stride-2 3x3 convolutions (conv, BatchNorm, ReLU; one per width) instead of a patch
    projection: four of them give a 4x4 token grid at 64 px. Early convolutions make a small ViT learn
    much faster (Xiao et al., 2021). On the reference card task, distilled for 30 epochs on the same
    pools (worst held-out view / mean cosine vs the teacher): 8-px patches, 64-d, 6 blocks 0.59 / 0.84;
    three convolutions (8x8 tokens), 64-d, 6 blocks 0.71 / 0.92; these defaults 0.84 / 0.96.
    `vit_options` go to VisionTransformer (e.g. global_pool="avg", class_token=False)."""
    from torch import nn

    import_timm()
    layers, channels = [], 3
    for width in widths:
        layers += [nn.Conv2d(channels, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        channels = width
    return _vit_on(nn.Sequential(*layers), input_size, embed_dim, depth, num_heads, **vit_options)


def convnext_stem_vit(
    input_size: int,
    stem: str = "test_convnext",
    stem_stages: int = 3,
    embed_dim: int = 128,
    depth: int = 4,
    num_heads: int = 4,
    **vit_options,
):
    """A hybrid ViT: the first `stem_stages` stages of timm's ConvNeXt `stem` (its 4x4 patchify stem,
    depthwise 7x7 blocks, a stride-2 downsample between stages: a 4x4 grid at 64 px after three) make the
    tokens of conv_stem_vit's transformer. Convolutions first, attention on the coarse grid, like
    CoAtNet; a student of a ConvNeXt teacher follows it where an occluder changes local features.
    Distilled from the reference teacher for 200 epochs (worst held-out view / mean cosine vs the teacher
    / final training loss): conv_stem_vit 0.938 / 0.989 / 0.092, with a residual block after each of its
    convolutions 0.955 / 0.991 / 0.082, with twice its widths 0.927 / 0.990 / 0.086; this 0.972 / 0.994
    / 0.049 (923 k weights)."""
    from torch import nn

    timm = import_timm()
    convnext = timm.create_model(stem, num_classes=0)
    backbone = nn.Sequential(convnext.stem, *list(convnext.stages)[:stem_stages])
    return _vit_on(backbone, input_size, embed_dim, depth, num_heads, **vit_options)


def _vit_on(backbone, input_size: int, embed_dim: int, depth: int, num_heads: int, **vit_options):
    """timm's VisionTransformer (class token, learned position embeddings, MLP ratio 4) with one token
    per position of `backbone`'s output."""
    from timm.layers import HybridEmbed
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=input_size,
        patch_size=1,  # one token per position of the backbone's output
        num_classes=0,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=4,
        embed_layer=partial(HybridEmbed, backbone=backbone),
        **vit_options,
    )
