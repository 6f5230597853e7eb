"""The `zoo` command runs its work in a child process, so that a native crash (a toolchain or runtime
segfaulting on a freshly built artifact) is reported like any other failure — one line naming what was
running and exit 3 — instead of taking the process down with no message.

The child is `python -m zoo` with the same arguments, its output on the same terminal; it writes the
progress step it is in to a breadcrumb file (zoo.progress), which the parent reads when the child dies
of a signal. `ZOO_NO_ISOLATION=1` runs in-process (e.g. under a native debugger)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from zoo.errors import EXIT_CONVERSION_FAILED

CHILD_ENV = "ZOO_ISOLATED"  # set in the child: it does the work itself
BREADCRUMB_ENV = "ZOO_BREADCRUMB"  # the file the child writes its current step to
OPT_OUT_ENV = "ZOO_NO_ISOLATION"


def isolated() -> bool:
    """True where this process should do the work itself."""
    return bool(os.environ.get(CHILD_ENV) or os.environ.get(OPT_OUT_ENV))


def run_in_child(argv: list[str]) -> int:
    """Run `zoo argv` in a child process; its exit code, or exit 3 with one line if it died of a signal."""
    fd, crumb = tempfile.mkstemp(prefix="zoo-step-", suffix=".txt")
    os.close(fd)
    env = {**os.environ, CHILD_ENV: "1", BREADCRUMB_ENV: crumb}
    child = subprocess.Popen([sys.executable, "-m", "zoo", *argv], env=env, preexec_fn=_die_with_parent)

    def forward(signum, _frame):
        child.send_signal(signum)

    # Ctrl-C reaches the child through the terminal's process group; a TERM/HUP sent to this process
    # is passed on, so the child cleans up its staging folders and reports itself.
    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGHUP)}
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code = child.wait()
        step = Path(crumb).read_text(encoding="utf-8", errors="replace").strip()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        Path(crumb).unlink(missing_ok=True)
    if code >= 0:
        return code
    if -code == signal.SIGINT:
        return 130
    name = _signal_name(-code)
    where = f"during “{step}”" if step else "before its first step"
    print(f"zoo: error: a native crash ({name}) ended the run {where}", file=sys.stderr)
    print(
        "hint: a toolchain or runtime crashed inside native code, often on an artifact it cannot run; "
        "nothing was written under the final output name. For the native stack: "
        f"{OPT_OUT_ENV}=1 python -X faulthandler -m zoo …",
        file=sys.stderr,
    )
    return EXIT_CONVERSION_FAILED


def _die_with_parent() -> None:
    """In the child, before exec (Linux): a TERM when the parent dies, even of SIGKILL — the child then
    cleans up as on any TERM instead of running on unseen."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def note_step(label: str | None) -> None:
    """Record the step the child is in (nothing outside a child). Best effort: never fails a run."""
    path = os.environ.get(BREADCRUMB_ENV)
    if not path:
        return
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(label or "")
    except OSError:
        pass
