"""Hailo-8L: everything up to Hailo's Dataflow Compiler (DFC), the DFC itself when it is installed,
and an honest substitute when it is not.

The DFC (`hailo_sdk_client`) and HailoRT (`hailo_platform`) are proprietary wheels from Hailo's
developer zone: they are not on the package registries, so they are imported only inside the steps
that need them, and a missing one is reported as `not run`, never as a .hef that does not exist.

The bundle a conversion writes (the output directory of `zoo convert --target hailo8l`):

    model.onnx                 Hailo-ready ONNX: opset 17, batch 1, NCHW float input normalized
                               ((x/255 - mean)/std), explicit attention, no final L2 normalization
    model.alls                 the model script: normalization (mean/std in 0–255 units), optimization
                               and compression levels, 16-bit layers, compiler level, user override
    calibration.npy            NHWC float32, unnormalized 0–255 RGB: what the DFC's optimize() takes
    hailo_parity.npz           the reference photos (NHWC uint8) and the source model's embeddings,
                               for the SDK-emulator parity ladder on a DFC host
    model.int8-emulated.onnx   ONNX Runtime QDQ int8 set up like Hailo's scheme (fidelity `emulated`)
    COMPILE.md                 the exact command that compiles the bundle on a DFC host
    manifest.json, report.*    hashes, records (host L2 normalization, calibration sha256 …), checks
    model.hef, model.har       only after the DFC ran (`zoo hailo compile BUNDLE` on a DFC host)

Input layout (decided here, stated everywhere): the ONNX keeps PyTorch's NCHW layout and takes the
*normalized* tensor, exactly as the source model does; the model script's `normalization` layer
moves mean/std onto the chip, so the compiled .hef takes NHWC uint8 RGB pixels (0–255), which is
what HailoRT feeds and what the DFC's optimize() wants its calibration set in (NHWC, 0–255).
This is the arrangement of Hailo's own public model zoo (e.g. vit_small: an opset-17 ONNX of
timm's model, with `normalization([127.5…], [127.5…])` in its .alls).
"""

from __future__ import annotations

HW_ARCH = "hailo8l"

ONNX_FILE = "model.onnx"
MODEL_SCRIPT_FILE = "model.alls"
CALIBRATION_FILE = "calibration.npy"
PARITY_FILE = "hailo_parity.npz"
EMULATED_FILE = "model.int8-emulated.onnx"
COMPILE_FILE = "COMPILE.md"
HEF_FILE = "model.hef"
HAR_FILE = "model.har"

# Hailo's recommendation for the calibration set size (its ViT recipes use calibset_size=1024, and
# the DFC warns below it); zoo warns below it too.
RECOMMENDED_CALIBRATION = 1024
# Without --calibration DIR, zoo calibrates on crops of the bundled reference photos: 64 views is the
# calibset_size many of Hailo's public zoo scripts use; more views of 12 photos add little.
DEFAULT_REFERENCE_CALIBRATION = 64

DFC_MISSING = "Hailo Dataflow Compiler not installed"
DFC_HINT = (
    "install Hailo's Dataflow Compiler wheel (hailo_dataflow_compiler, from Hailo's developer zone) on an "
    "x86-64 Linux build host, then run `zoo hailo compile BUNDLE` there"
)
HAILORT_HINT = (
    "install HailoRT (the hailort driver and its hailo_platform wheel, from Hailo's developer zone or the "
    "Raspberry Pi OS `hailo-all` package) on the device, then run `zoo validate BUNDLE` there"
)


def net_name_for(model_name: str) -> str:
    """The DFC network name: Hailo layer names are prefixed with it (e.g. `convnext_tiny/ew_add3`)."""
    safe = "".join(c if c.isalnum() or c == "_" else "_" for c in model_name)
    return safe if safe[:1].isalpha() else f"net_{safe}"
