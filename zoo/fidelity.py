"""What a number means, and whether a check passed. Every figure zoo reports carries both."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum


class Fidelity(StrEnum):
    MEASURED = "measured"  # the real runtime executed the artifact on this host
    DEVICE = "device"  # the real runtime on the real device
    EMULATED = "emulated"  # our own or the vendor's execution, not the device runtime
    ESTIMATED = "estimated"  # a model of the device, no execution
    NOT_RUN = "not run"  # nothing could check it here


class Status(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    NOT_RUN = "not run"  # never counts as a pass
    INFO = "info"  # reported, not gated (e.g. host latency against a device budget)
    NOT_APPLICABLE = "n/a"


@dataclass(frozen=True)
class Check:
    """One row of a report: a named number, its threshold, where it came from, and the verdict."""

    name: str
    status: Status
    fidelity: Fidelity
    value: float | str | None = None
    threshold: str = ""
    artifact: str = ""
    detail: str = ""
    data: dict = field(default_factory=dict)  # full figures (per-sample cosines, percentiles…)
    origin: str = ""  # "" = computed by this run; else where the row comes from, e.g. "conversion 2026-…Z"

    def carried(self, origin: str) -> Check:
        """This row in a later report that could not re-run it: same status and fidelity, labelled."""
        note = f"from the {origin}; not re-run"
        return replace(self, origin=origin, detail=f"{self.detail}; {note}" if self.detail else note)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "artifact": self.artifact,
            "value": self.value,
            "threshold": self.threshold,
            "fidelity": self.fidelity.value,
            "status": self.status.value,
            "detail": self.detail,
            "data": self.data,
            "origin": self.origin,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Check:
        return cls(
            name=d["name"],
            status=Status(d["status"]),
            fidelity=Fidelity(d["fidelity"]),
            value=d.get("value"),
            threshold=d.get("threshold", ""),
            artifact=d.get("artifact", ""),
            detail=d.get("detail", ""),
            data=d.get("data", {}),
            origin=d.get("origin", ""),
        )
