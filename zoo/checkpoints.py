"""Loading checkpoints safely: hash first, then safetensors or a weights-only torch load, strict keys."""

from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path

from zoo.errors import CheckpointError
from zoo.registry import Checkpoint

_MAX_LISTED = 8
# torch's UnpicklingError names the refused callable: "Unsupported global: GLOBAL eval was not an allowed
# global …" or "Trying to load unsupported GLOBAL posix.system whose module posix is blocked"
_GLOBAL = re.compile(r"GLOBAL\s+([\w.]+)")
SAFE_HINT = (
    "checkpoints are safetensors files or torch files of plain tensors: convert it to safetensors where it "
    "was trained (safetensors.torch.save_file(model.state_dict(), 'model.safetensors')) and register that file"
)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(checkpoint: Checkpoint) -> dict:
    """The checkpoint's tensors, after checking its sha256. Never unpickles arbitrary objects."""
    path = checkpoint.path
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    actual = sha256_file(path)
    if actual != checkpoint.sha256:
        raise CheckpointError(
            f"checkpoint {path.name} has sha256 {actual[:16]}…, the registry expects {checkpoint.sha256[:16]}…",
            hint="the file is truncated, corrupt or not the registered one; restore it or update the registry's sha256",
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        import torch

        with warnings.catch_warnings():  # torch warns about pickle protocols; the refusal below says it all
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # every loader error means the same to the user: unreadable file
        raise _unreadable(path, exc) from exc
    for key in ("state_dict", "model"):  # common training-loop wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path.name} holds a {type(state).__name__}, not a state dict")
    return state


def _unreadable(path: Path, exc: Exception) -> CheckpointError:
    """Name what the file would have run; torch's own text advises loading it unsafely, never repeat it."""
    text = str(exc)
    found = _GLOBAL.search(text)
    name = found.group(1) if found else _first_pickled_callable(path)
    if name:
        name = re.sub(r"^(posix|nt)\.", "os.", name)  # os.system pickles as posix.system
        message = (
            f"checkpoint {path.name} cannot be read safely: it would call {name} when loaded "
            "(weights-only loading allows tensors only), so it was refused"
        )
    elif "weights_only" in text:
        message = f"checkpoint {path.name} cannot be read safely: it holds objects other than tensors"
    else:
        message = f"checkpoint {path.name} cannot be read: {type(exc).__name__}: {text.splitlines()[0][:200]}"
    return CheckpointError(message, hint=SAFE_HINT)


def _first_pickled_callable(path: Path) -> str | None:
    """The first callable a bare pickle imports, read with pickletools (which executes nothing); torch
    refuses some pickles at an opcode before it reaches the import, so its message cannot name it."""
    import pickletools

    strings: list[str] = []
    try:
        with open(path, "rb") as f:
            for opcode, arg, _ in pickletools.genops(f):
                if opcode.name in ("GLOBAL", "INST"):
                    return str(arg).replace(" ", ".")
                if opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    return f"{strings[-2]}.{strings[-1]}"
                if isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # not a bare pickle (a torch zip archive, garbage): nothing to name
        return None
    return None


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else "")


def load_into(module, checkpoint: Checkpoint) -> None:
    """Load the checkpoint into `module` with strict key and shape matching and a readable error."""
    state = read_state_dict(checkpoint)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(
        f"{k} {tuple(state[k].shape)}≠{tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s): {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s): {_listing(unexpected)}")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} shape mismatch(es): {_listing(wrong_shape)}")
    if problems:
        raise CheckpointError(
            f"checkpoint {checkpoint.path.name} does not match the model: " + "; ".join(problems),
            hint="checkpoints hold the whole embedding model: keys start with 'backbone.' and 'head.'",
        )
    module.load_state_dict(state, strict=True)
