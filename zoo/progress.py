"""Progress lines on stderr for long steps: what is running, then how long it took."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager


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
        yield
        self.say(f"{label}: done in {time.perf_counter() - start:.1f} s")


QUIET = Progress(enabled=False)
