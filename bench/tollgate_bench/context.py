"""What every section gets: options, the built artefacts, the CPU layout, the process
supervisor and a scratch directory."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .processes import Supervisor

REPO = Path(__file__).resolve().parents[2]
TOLLGATE_WASM = REPO / "target" / "tollgate.wasm"
NOOP_WASM = REPO / "target" / "bench-noop" / "wasm32-wasip1" / "release" / "tollgate_bench_noop.wasm"


@dataclass
class CpuLayout:
    """Where the measured Envoy runs and where load generators (wrk, the upstream) run: on
    different cores when there are two or more, so the measured Envoy has a core to itself."""

    envoy: str | None
    load: str | None

    @classmethod
    def detect(cls) -> "CpuLayout":
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) >= 2:
            return cls(envoy=str(cpus[-1]), load=",".join(str(c) for c in cpus[:-1]))
        return cls(envoy=None, load=None)

    def describe(self) -> str:
        if self.envoy is None:
            return "not pinned (one CPU)"
        return f"measured Envoy on CPU {self.envoy}; wrk and the upstream Envoy on CPU {self.load}"


@dataclass
class Bench:
    quick: bool
    rounds: int
    round_seconds: float
    envoy_binary: Path
    workdir: Path
    supervisor: Supervisor
    cpus: CpuLayout
    # The module under test, copied into workdir at start: a rebuild of target/ by someone
    # else during the run cannot change what is measured.
    tollgate_wasm: Path
    notes: list[str] = field(default_factory=list)

    def log(self, message: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
