"""Progress lines on stderr for long steps: what is running, then how long it took."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager

from zoo.isolation import note_step

_STEPS: list[str] = []  # the steps running now, outermost first (for a native crash's one line)


class Progress:
    def __init__(self, enabled: bool = True, stream=None):
        self.enabled = enabled
        self.stream = stream or sys.stderr

    def say(self, message: str) -> None:
        if self.enabled:
            print(f"[zoo] {message}", file=self.stream, flush=True)

    @contextmanager
    def step(self, label: str):
        self.say(f"{label} …")
        start = time.perf_counter()
        _STEPS.append(label)
        note_step(" › ".join(_STEPS))
        try:
            yield
        finally:
            _STEPS.pop()
            note_step(" › ".join(_STEPS))
        self.say(f"{label}: done in {time.perf_counter() - start:.1f} s")


QUIET = Progress(enabled=False)
