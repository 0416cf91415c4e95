"""Driving a server with wrk and reading its report."""

from __future__ import annotations

import re
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

LUA_SCRIPT = Path(__file__).resolve().parent / "wrk" / "post.lua"

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_DURATION = r"([\d.]+)(us|ms|s|m|h)"


class WrkError(Exception):
    """wrk could not run or printed something we cannot read."""


@dataclass
class WrkResult:
    """What one wrk run measured."""

    requests: int
    seconds: float
    requests_per_s: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    non_2xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)
    raw: str = ""

    @property
    def errors(self) -> int:
        """Non-2xx responses plus socket errors (connect, read, write, timeout)."""
        return self.non_2xx + sum(self.socket_errors.values())

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["errors"] = self.errors
        del data["raw"]
        return data


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS_MS[unit]


def parse_wrk(text: str) -> WrkResult:
    """Read wrk's `--latency` report."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    total = re.search(r"^\s*(\d+) requests in " + _DURATION, text, re.M)
    pct = {p: re.search(rf"^\s+{p}%\s+{_DURATION}", text, re.M) for p in (50, 75, 90, 99)}
    if rps is None or total is None or any(m is None for m in pct.values()):
        raise WrkError(f"cannot read wrk's output:\n{text}")
    lat = {p: _ms(m.group(1), m.group(2)) for p, m in pct.items() if m is not None}
    result = WrkResult(
        requests=int(total.group(1)),
        seconds=_ms(total.group(2), total.group(3)) / 1000.0,
        requests_per_s=float(rps.group(1)),
        p50_ms=lat[50],
        p75_ms=lat[75],
        p90_ms=lat[90],
        p99_ms=lat[99],
        raw=text,
    )
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if non2xx:
        result.non_2xx = int(non2xx.group(1))
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if sock:
        names = ("connect", "read", "write", "timeout")
        counts = {n: int(v) for n, v in zip(names, sock.groups(), strict=True)}
        result.socket_errors = {n: v for n, v in counts.items() if v}
    return result


def run_wrk(
    url: str,
    body_file: Path,
    *,
    duration: float,
    connections: int,
    authorization: str = "",
    timeout_s: str = "5s",
) -> WrkResult:
    """One wrk run of `duration` seconds POSTing `body_file` to `url` (one wrk thread)."""
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={timeout_s}",
        "--latency",
        "-s",
        str(LUA_SCRIPT),
        url,
        "--",
        str(body_file),
        authorization,
    ]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=duration + 30, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise WrkError(f"wrk did not finish within {duration + 30:.0f} s") from exc
    if proc.returncode != 0:
        raise WrkError(f"wrk exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return parse_wrk(proc.stdout)
