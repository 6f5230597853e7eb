"""The Hailo bundle: what `zoo convert --target hailo8l` leaves, checked and compiled from itself alone.

`zoo hailo compile BUNDLE` (on a DFC host) needs nothing but the folder: it checks every file against
the manifest (sha256) and the calibration set against its recorded sha256, runs the DFC driver, puts
model.hef and model.har into the folder and records them in the manifest, so `zoo validate BUNDLE`
on the Raspberry Pi then runs the .hef through HailoRT (device fidelity).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoo.errors import UsageError
from zoo.fidelity import Check, Fidelity, Status
from zoo.hailo import (
    CALIBRATION_FILE,
    DFC_HINT,
    EMULATED_FILE,
    HAR_FILE,
    HEF_FILE,
    HW_ARCH,
    MODEL_SCRIPT_FILE,
    ONNX_FILE,
    PARITY_FILE,
)
from zoo.hailo.dfc import DfcJob, ParityReference, dfc_unavailable_reason, run_dfc
from zoo.outputs import file_entry, read_manifest, write_manifest, write_text_atomic
from zoo.progress import QUIET, Progress
from zoo.report import Report

RECORD = "hailo"  # the manifest key of the Hailo record
REQUIRED = (ONNX_FILE, MODEL_SCRIPT_FILE, CALIBRATION_FILE, PARITY_FILE)


def array_sha256(array: np.ndarray) -> str:
    """The calibration set's hash as zoo.calibration computes it (float32 bytes, C order)."""
    return hashlib.sha256(np.ascontiguousarray(array, np.float32).tobytes()).hexdigest()


def write_parity_reference(path: Path, parity: ParityReference) -> None:
    with open(path, "wb") as fh:
        np.savez(
            fh,
            images_nhwc_uint8=parity.images_nhwc_uint8,
            source=parity.source.astype(np.float32),
            mean=np.asarray(parity.mean, np.float64),
            std=np.asarray(parity.std, np.float64),
            labels=np.asarray(parity.labels, dtype=str),
        )


def load_parity_reference(path: Path) -> ParityReference:
    with np.load(path, allow_pickle=False) as data:
        return ParityReference(
            images_nhwc_uint8=data["images_nhwc_uint8"],
            source=data["source"],
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
            labels=tuple(str(v) for v in data["labels"]),
        )


# Commands in the bundle's files name the bundle as `.` (run from inside it): the bundle is copied
# between hosts, so the build host's absolute path would be wrong, and it is the build host's business.
BUNDLE_ARG = "."


def compile_instructions(record: dict, *, compiled: bool = False) -> str:
    """COMPILE.md: the exact command, what it runs, and the host-side contract of the .hef."""
    shapes = record["net_input_shapes"]
    (inp, shape), *_ = shapes.items()
    end = ", ".join(record["end_node_names"])
    size = f"{shape[3]}×{shape[2]}"
    dim = record["output_dim"]
    output = (
        f"the {dim}-d embedding **before L2 normalization**: divide it by its L2 norm on the host\n"
        "  (`host_l2_normalize: true` in manifest.json), or embeddings will not match the other artifacts."
        if record.get("host_l2_normalize", True)
        else f"the {dim}-d embedding as the source model gives it (the model has no L2 normalization)."
    )
    status = (
        f"This bundle's {HEF_FILE} was compiled where zoo made it; the command below compiles it again."
        if compiled
        else "This bundle has **no .hef**: the Hailo Dataflow Compiler (DFC) was not installed where zoo made it."
    )
    return f"""# Compiling this bundle for the Hailo-8L

{status}
It holds everything the DFC needs: the Hailo-ready ONNX ({ONNX_FILE}), the model script
({MODEL_SCRIPT_FILE}), the calibration set ({CALIBRATION_FILE}, NHWC float32, 0–255, sha256 in
manifest.json) and the reference embeddings for the parity ladder ({PARITY_FILE}).

On an x86-64 Linux host with Hailo's DFC (`hailo_sdk_client`) and zoo installed, from inside this
folder (every path here is relative to it):

    zoo hailo compile {BUNDLE_ARG}

It checks every file against manifest.json, then runs
`ClientRunner(hw_arch="{HW_ARCH}")` → `translate_onnx_model("{ONNX_FILE}", "{record["net_name"]}",
start_node_names=["{inp}"], end_node_names=["{end}"], net_input_shapes={{"{inp}": {shape}}})` →
`load_model_script({MODEL_SCRIPT_FILE})` → `optimize(calibration)` → `compile()`, writes {HEF_FILE} and
{HAR_FILE} here, reports the parity ladder in the SDK emulator (native → fp-optimized → quantized) and
records all of it in manifest.json.

The same with Hailo's own command-line tool (flags as in Hailo's DFC documentation; zoo did not run these):

    hailo parser onnx {ONNX_FILE} --hw-arch {HW_ARCH} --start-node-names {inp} --end-node-names {end}
    hailo optimize model.har --hw-arch {HW_ARCH} --calib-set-path {CALIBRATION_FILE} --model-script {MODEL_SCRIPT_FILE}
    hailo compiler model_optimized.har --hw-arch {HW_ARCH}

Then, on the Raspberry Pi with HailoRT (`hailo_platform`), from inside this folder: `zoo validate {BUNDLE_ARG}`
runs {HEF_FILE} on the Hailo-8L (parity and latency with `device` fidelity).

## Using the .hef

- input: NHWC uint8 RGB, {size}: shorter side resized to {shape[2]} (bicubic), then center-cropped —
  no mean/std on the host, the normalization runs on the chip ({MODEL_SCRIPT_FILE});
- output: {output}

## The two ONNX files (each one's metadata states its input contract)

- {ONNX_FILE}: NCHW float32, normalized on the host, (x/255 - mean)/std with the `mean`/`std` in its metadata;
- {EMULATED_FILE}: NHWC float32 holding whole pixel values 0–255 (quantized to uint8 at its input,
  as the chip receives them), the normalization inside: apply no mean/std (its metadata: `normalization`).
"""


@dataclass(frozen=True)
class Bundle:
    directory: Path
    manifest: dict
    record: dict

    def path(self, name: str) -> Path:
        return self.directory / name


def load_bundle(directory: Path) -> Bundle:
    directory = Path(directory)
    manifest = read_manifest(directory)
    record = manifest.get(RECORD)
    if not isinstance(record, dict):
        raise UsageError(
            f"{directory} is not a Hailo bundle (its manifest has no '{RECORD}' record)",
            hint="make one with: zoo convert --model MODEL --target hailo8l",
        )
    return Bundle(directory, manifest, record)


def verify_bundle(bundle: Bundle) -> list[str]:
    """Everything that makes the bundle unusable, listed at once (empty when complete and unmodified)."""
    problems = []
    entries = {e["path"]: e for e in bundle.manifest.get("artifacts", [])}
    for name in REQUIRED:
        path = bundle.path(name)
        if name not in entries:
            problems.append(f"{name} is not listed in manifest.json")
        elif not path.is_file():
            problems.append(f"{name} is missing")
        elif file_entry(bundle.directory, name)["sha256"] != entries[name]["sha256"]:
            problems.append(f"{name} differs from manifest.json (sha256)")
    calibration = bundle.manifest.get("calibration") or {}
    path = bundle.path(CALIBRATION_FILE)
    if path.is_file():
        array = np.load(path, allow_pickle=False)
        if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.float32:
            problems.append(f"{CALIBRATION_FILE} is {array.dtype} {array.shape}, not NHWC float32 (N, H, W, 3)")
        elif array_sha256(array) != calibration.get("sha256"):
            problems.append(f"{CALIBRATION_FILE} does not match the calibration sha256 recorded in manifest.json")
        elif len(array) != calibration.get("count"):
            problems.append(
                f"{CALIBRATION_FILE} has {len(array)} images; manifest.json records {calibration.get('count')}"
            )
    for key in ("net_name", "start_node_names", "end_node_names", "net_input_shapes"):
        if key not in bundle.record:
            problems.append(f"manifest.json's {RECORD} record has no {key!r}")
    return problems


@dataclass(frozen=True)
class CompileOutcome:
    directory: Path
    report: Report


def compile_bundle(directory: Path, *, progress: Progress = QUIET) -> CompileOutcome:
    """Run the DFC on a bundle (a DFC host), add model.hef/model.har to it, report the SDK parity ladder."""
    bundle = load_bundle(directory)
    problems = verify_bundle(bundle)
    if problems:
        raise UsageError(
            f"{bundle.directory} is not a complete, unmodified Hailo bundle: " + "; ".join(problems),
            hint="re-create it with `zoo convert --target hailo8l` (put model-script changes in the model's "
            "override file, tags.hailo_model_script, not in model.alls)",
        )
    reason = dfc_unavailable_reason()
    if reason:
        raise UsageError(f"cannot compile {bundle.directory} here: {reason}", hint=DFC_HINT)
    record = bundle.record
    job = DfcJob(
        onnx=bundle.path(ONNX_FILE),
        model_script=bundle.path(MODEL_SCRIPT_FILE).read_text(),
        calibration=np.load(bundle.path(CALIBRATION_FILE), allow_pickle=False),
        net_name=record["net_name"],
        start_node_names=tuple(record["start_node_names"]),
        end_node_names=tuple(record["end_node_names"]),
        net_input_shapes=dict(record["net_input_shapes"]),
        hw_arch=record.get("hw_arch", HW_ARCH),
        sixteen_bit_nodes=tuple(record.get("sixteen_bit_nodes", ())),
    )
    parity = load_parity_reference(bundle.path(PARITY_FILE))
    target = bundle.manifest["target"]
    staging = bundle.directory / f".hailo-compile-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with progress.step("compiling with the Hailo Dataflow Compiler"):
            result = run_dfc(
                job,
                staging,
                parity=parity,
                min_cosine_quantized=float(target["min_cosine_vs_source"]),
                say=progress.say,
            )
        for name in (HEF_FILE, HAR_FILE):
            os.replace(staging / name, bundle.path(name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    compiled = Check(
        "compile .hef (Hailo Dataflow Compiler)",
        Status.PASS,
        Fidelity.MEASURED,
        value=f"{result.hef_bytes} bytes",
        threshold="a non-empty .hef",
        artifact=HEF_FILE,
        detail=f"hailo_sdk_client {result.sdk_version}, hw_arch {job.hw_arch}, calibration "
        f"{len(job.calibration)} images (sha256 {bundle.manifest['calibration']['sha256'][:12]}…)",
    )
    checks = (compiled, *result.ladder)
    manifest = dict(bundle.manifest)
    host_l2 = bool(manifest.get("host_l2_normalize", True))
    artifacts = [a for a in manifest["artifacts"] if a["path"] not in (HEF_FILE, HAR_FILE)]
    artifacts.append(
        {
            **file_entry(bundle.directory, HEF_FILE),
            "format": "hef",
            "runnable": True,
            "description": f"compiled for {job.hw_arch} by the Hailo Dataflow Compiler {result.sdk_version}",
            "runtime": "hailort",
            "host_l2_normalize": host_l2,
        }
    )
    artifacts.append(
        {
            **file_entry(bundle.directory, HAR_FILE),
            "format": "hailo-har",
            "runnable": False,
            "description": "Hailo archive (parsed, optimized and compiled model)",
            "runtime": "",
            "host_l2_normalize": host_l2,
        }
    )
    manifest["artifacts"] = artifacts
    manifest[RECORD] = {
        **record,
        "hef": HEF_FILE,
        "hef_status": "compiled",
        "compile": {"sdk_version": result.sdk_version, "checks": [c.to_dict() for c in checks]},
    }
    manifest.setdefault("tools", {})["hailo_sdk_client"] = result.sdk_version
    write_manifest(bundle.directory, manifest)
    report = Report(
        model=manifest["model"]["name"],
        target=target["name"],
        checks=checks,
        artifacts=(HEF_FILE, HAR_FILE),
        info={
            "bundle": bundle.directory.name,
            "next": f"on the device, from inside the bundle: zoo validate {BUNDLE_ARG}",
        },
    )
    write_text_atomic(bundle.path("hailo_compile.json"), json.dumps(report.to_dict(), indent=2) + "\n")
    return CompileOutcome(bundle.directory, report)
