"""`bench/run [--quick] [--sections cost,exactness,fleet] [--rounds N] [--seconds S]`

Runs the sections in order, prints the Markdown report and writes it to BENCHMARKS.md (a full
run) or to a temporary file (`--quick`, which only proves the harness works: CI runs it so the
harness cannot rot, and asserts no timing). Expects what bench/run prepares: the venv with
Envoy, wrk, target/tollgate.wasm and the no-op filter.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable

from . import exactness, fleet, production, propagation, replicas, request_cost, scale
from .context import NOOP_WASM, REPO, TOLLGATE_WASM, Bench, CpuLayout
from .envoy import envoy_binary, envoy_version
from .processes import Supervisor, raise_on_termination_signals
from .report import SectionReport, document, machine_lines

# Issue 11 §3's headline, issue 6's parts in order, then issue 13's fleet-wide counting and
# issue 14's replicas on PostgreSQL.
SECTIONS: dict[str, Callable[[Bench], SectionReport]] = {
    "production": production.run,
    "cost": request_cost.run,
    "exactness": exactness.run,
    "propagation": propagation.run,
    "scale": scale.run,
    "fleet": fleet.run,
    "replicas": replicas.run,
}
PENDING: list[str] = []  # parts of issue 6 not measured yet
WASM_MAGIC = b"\0asm"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one short round per section; never writes BENCHMARKS.md")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of: {', '.join(SECTIONS)}")
    parser.add_argument("--rounds", type=int, help="interleaved rounds of the request-cost section (default 5, quick 1)")
    parser.add_argument("--seconds", type=float, help="seconds per configuration and round (default 5, quick 1)")
    parser.add_argument("--no-build", action="store_true", help="bench/run did not rebuild target/tollgate.wasm")
    parser.add_argument("--wasm", type=Path, default=TOLLGATE_WASM, help="the tollgate module to measure (default target/tollgate.wasm; bench/run then builds nothing of tollgate)")
    parser.add_argument("--output", type=Path, help="where to write the report (default BENCHMARKS.md, quick: a temp file)")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="with --sections: replace only those sections (and their summary lines) in the report at --output "
        "(default BENCHMARKS.md), keeping the rest of the last full run; the header names both runs",
    )
    args = parser.parse_args(argv)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    if args.rounds is None:
        args.rounds = 1 if args.quick else 5
    if args.seconds is None:
        args.seconds = 1.0 if args.quick else 5.0
    if not 1 <= args.rounds <= 50 or not 1 <= args.seconds <= 60:
        parser.error("--rounds must be 1..50 and --seconds 1..60")
    return args


def merge(previous: str, reports: list, command: str, machine: list[str]) -> str:
    """`previous` with the sections of `reports` (and their summary lines, told apart by the
    words before their first comma) replaced by this run's, and a header line naming this run."""
    lines = previous.rstrip("\n").split("\n")
    for report in reports:
        heading = f"## {report.title}"
        if heading not in lines:
            # A section the previous run did not have: it goes at the end.
            lines += ["", heading, ""]
        start = lines.index(heading)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines[start:end] = [heading, "", report.markdown.strip(), ""]
        kinds = {h.split(",")[0] for h in report.headlines}
        summary = [i for i, line in enumerate(lines) if line.startswith("- ") and line[2:].split(",")[0] in kinds]
        at = summary[0] if summary else lines.index("## Summary") + 2
        for i in reversed(summary):
            del lines[i]
        lines[at:at] = [f"- {h}" for h in report.headlines]
    header = lines.index("## Summary") if "## Summary" in lines else len(lines)
    commit = next((m for m in machine if m.startswith("- tollgate commit:")), "")
    load = next((m for m in machine if m.startswith("- Load average")), "")
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    note = f"- Re-measured since: `{command}` on {now}, {commit[2:]}; {load[2:]}"
    # The same command measured again replaces what its earlier run said, not beside it.
    earlier = f"- Re-measured since: `{command}` on "
    lines = [line for line in lines if not line.startswith(earlier)]
    header = lines.index("## Summary") if "## Summary" in lines else len(lines)
    lines.insert(header - 1 if lines[header - 1] == "" else header, note)
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    for artefact in (args.wasm, NOOP_WASM):
        if not artefact.exists() or artefact.read_bytes()[:4] != WASM_MAGIC:
            print(f"missing or not a wasm module: {artefact} (bench/run builds it)", file=sys.stderr)
            return 2
    raise_on_termination_signals()
    supervisor = Supervisor()
    binary = envoy_binary()
    with tempfile.TemporaryDirectory(prefix="tollgate-bench-") as workdir:
        tollgate_wasm = Path(workdir) / "tollgate.wasm"
        shutil.copy2(args.wasm, tollgate_wasm)  # keeps the build time
        bench = Bench(
            quick=args.quick,
            rounds=args.rounds,
            round_seconds=args.seconds,
            envoy_binary=binary,
            workdir=Path(workdir),
            supervisor=supervisor,
            cpus=CpuLayout.detect(),
            tollgate_wasm=tollgate_wasm,
        )
        machine = machine_lines(envoy_version(binary), bench.cpus.describe(), args.wasm, tollgate_wasm, rebuilt=not args.no_build and args.wasm == TOLLGATE_WASM)
        reports = []
        try:
            for name in args.sections.split(","):
                bench.log(f"section {name}")
                reports.append(SECTIONS[name](bench))
                supervisor.stop_all()
        finally:
            supervisor.stop_all()
    command = "bench/run" + ("" if not argv else " " + shlex.join(argv))
    markdown = document(command, machine, reports, PENDING if not args.quick else [])
    print(markdown)
    if args.output is not None:
        output = args.output
    elif args.quick and not args.merge:
        output = Path(tempfile.mkstemp(prefix="tollgate-bench-quick-", suffix=".md")[1])
    else:
        output = REPO / "BENCHMARKS.md"
    if args.merge:
        markdown = merge(output.read_text(), reports, command, machine)
    output.write_text(markdown + "\n")
    print(f"\nwrote {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
