"""Architectures of reference models that timm has no registered name for (registry `architecture =
"zoo.reference_models.architectures:NAME"`; each takes the input size and returns a backbone)."""

from __future__ import annotations

from functools import partial

from zoo._torchvision_compat import import_timm


def conv_stem_vit(input_size: int, widths: tuple[int, ...] = (16, 32, 64)):
    """timm's ViT (test_vit's width and depth: 64-d, 6 blocks, 2 heads; MLP ratio 4) whose patches come
    from three stride-2 3x3 convolutions instead of one 8x8 projection: an 8x8 token grid at 64 px, as
    with 8-px patches. Early convolutions make a small ViT learn much faster (Xiao et al., 2021): on the
    reference card task, distilled 30 epochs, the worst held-out view vs the teacher 0.68 at 20 epochs
    against 0.41 with the patch projection."""
    from torch import nn

    import_timm()
    from timm.layers import HybridEmbed
    from timm.models.vision_transformer import VisionTransformer

    layers, channels = [], 3
    for width in widths:
        layers += [nn.Conv2d(channels, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        channels = width
    return VisionTransformer(
        img_size=input_size,
        patch_size=1,  # one token per position of the stem's output
        num_classes=0,
        embed_dim=64,
        depth=6,
        num_heads=2,
        mlp_ratio=4,
        embed_layer=partial(HybridEmbed, backbone=nn.Sequential(*layers)),
    )
