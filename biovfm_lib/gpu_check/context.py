"""What a step gets: where to work, which device, and a record it writes as it goes.

Every figure, check and note is written to the step's result file the moment it is known
(atomically), so a step that later crashes, runs out of memory or is stopped at its limit
still hands the runner everything it measured before.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biovfm_lib.runs import atomic_write_json

NEEDS_CUDA = "needs CUDA"


class Skipped(Exception):
    """Raised by a step that cannot run here; its message is the reason recorded."""


@dataclass
class StepContext:
    result: Path
    work: Path  # the step's own folder
    device: str  # "cuda" or "cpu"
    smoke: bool  # nano sizes, for a CPU between GPU visits
    figures: dict[str, Any] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    def put(self, **figures: Any) -> None:
        self.figures.update(figures)
        self.save()

    def check(self, figure: str, value: Any, target: str, passed: bool | None,
              unit: str = "") -> None:
        """A figure held against a target; ``passed`` None: not measured here."""
        self.checks.append({"figure": figure, "value": value, "unit": unit, "target": target,
                            "pass": passed})
        self.save()

    def note(self, text: str) -> None:
        print(text, flush=True)
        self.notes.append(text)
        self.save()

    def needs_cuda(self, what: str) -> bool:
        """True on a GPU; elsewhere notes that ``what`` was skipped, and returns False."""
        if not self.cuda:
            self.note(f"{what}: skipped: {NEEDS_CUDA}")
        return self.cuda

    def save(self, **extra: Any) -> None:
        atomic_write_json(self.result, {"figures": self.figures, "checks": self.checks,
                                        "notes": self.notes, **extra}, overwrite=True)
