"""The units of an evaluation and the folder that keeps each finished one.

An evaluation is cut into units: one method on one shard (a fixed block of consecutive
samples). A unit's per-sample scores depend only on the run's settings, the method and the
shard (every random draw is seeded from the seed, the metric's name and the shard index), so
the serial and the Ray engine give the same scores, and a rerun can skip what is done.

:class:`ShardStore` writes each finished unit as ``<out>/shards/<method>/<shard>.json`` the
moment it completes (atomically: a killed run never leaves half a file), next to
``<out>/shards/run.json``, the settings the units were computed with. A rerun with the same
``--out`` and the same settings skips the finished units; other settings are refused.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

from onnxsplit.errors import OnnxSplitError

RUN_FILE = "run.json"
SESSIONS_FILE = "sessions.jsonl"


@dataclass(frozen=True)
class Unit:
    """One method on one shard of samples [start, stop)."""

    method: str
    shard: int
    start: int
    stop: int

    @property
    def key(self) -> str:
        return f"{self.method}/{self.shard:04d}"


def shard_bounds(n_samples: int, shard_size: int) -> list[tuple[int, int]]:
    if shard_size < 1:
        raise OnnxSplitError("--shard-size must be at least 1")
    return [(i, min(i + shard_size, n_samples)) for i in range(0, n_samples, shard_size)]


def plan_units(methods: list[str], n_samples: int, shard_size: int) -> list[Unit]:
    """Every (method, shard), method-major: a worker that takes them in order keeps one
    method's compiled models warm."""
    bounds = shard_bounds(n_samples, shard_size)
    return [
        Unit(method, index, start, stop)
        for method in methods
        for index, (start, stop) in enumerate(bounds)
    ]


def unit_seed(seed: int, metric: str, shard: int) -> int:
    """The seed of one metric on one shard: from the metric's name, never its position."""
    return zlib.crc32(f"{seed}/{metric}/{shard}".encode()) % (2**32)


def _safe(method: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@+-]", "_", method)


@dataclass
class ShardStore:
    """``<out>/shards``: one JSON file per finished unit and the run's settings."""

    root: Path
    settings: dict

    @classmethod
    def open(cls, out_dir: Path, settings: dict) -> ShardStore:
        """The store of `out_dir`; refuses a folder whose units were computed otherwise."""
        root = Path(out_dir) / "shards"
        path = root / RUN_FILE
        if path.is_file():
            try:
                earlier = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise OnnxSplitError(
                    f"'{path}' is not readable ({exc}); delete the folder"
                ) from None
            changed = sorted(
                k for k in set(settings) | set(earlier) if settings.get(k) != earlier.get(k)
            )
            if changed:
                raise OnnxSplitError(
                    f"'{out_dir}' holds the finished shards of an evaluation with other settings "
                    f"({', '.join(changed)} differ); give another --out, or delete "
                    f"'{root}' to start over"
                )
        else:
            try:
                root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OnnxSplitError(
                    f"cannot write into output folder '{out_dir}': {exc.strerror or exc}"
                ) from None
            _write_atomic(path, json.dumps(settings, indent=1, sort_keys=True))
        return cls(root, settings)

    def path(self, unit: Unit) -> Path:
        return self.root / _safe(unit.method) / f"{unit.shard:04d}.json"

    def done(self, unit: Unit) -> bool:
        return self.path(unit).is_file()

    def write(self, unit: Unit, payload: dict) -> None:
        path = self.path(unit)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, json.dumps({"unit": asdict(unit), **payload}))

    def log_session(self, entry: dict) -> None:
        """Append one line for an invocation (engine, machine, wall seconds, units computed)."""
        with open(self.root / SESSIONS_FILE, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")

    def sessions(self) -> list[dict]:
        path = self.root / SESSIONS_FILE
        if not path.is_file():
            return []
        lines = path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def read(self, unit: Unit) -> dict:
        payload = json.loads(self.path(unit).read_text(encoding="utf-8"))
        if payload.get("unit") != asdict(unit):
            raise OnnxSplitError(f"'{self.path(unit)}' belongs to another unit; delete it")
        return payload


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def machine() -> str:
    """This machine in one line: CPU model, CPU count, memory."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f", {pages / 2**30:.0f} GiB"
    except (ValueError, OSError, AttributeError):
        pass
    return f"{cpu}, {os.cpu_count()} CPUs{memory}"
