"""Where Headwater keeps its files under the data directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class DataPaths:
    """The layout of a data directory (`--data`, default `./.headwater`)."""

    root: Path

    @property
    def control_db(self) -> Path:
        return self.root / "control.db"

    def log_dir(self, name: str) -> Path:
        return self.root / "log" / name

    @property
    def metrics_dir(self) -> Path:
        return self.root / "run" / "metrics"
