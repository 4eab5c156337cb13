#!/usr/bin/env python3
"""Checks that the control plane's modules depend on each other one way (issue 12 §4).

Reads every `crate::…`, `super::…` and `self::…` path in control-plane/src/**/*.rs (comments
left out, `use` trees expanded, `super` resolved, inline `mod tests { … }` blocks included),
resolves each to the deepest module it names, and fails on:

- a cycle among sibling modules at any level of the tree (the top-level modules, the files of
  `store/`, of `http/`…). A module may use its ancestors and its own descendants: a parent and
  its children are one unit, as in `http/mod.rs` merging the routes of `http/plans.rs`, which
  takes `super::AppState`;
- a top-level module that uses one in a higher layer, or is in no layer (place a new module
  in LAYERS on purpose);
- a module of the catalogue layer that uses the web stack (EXTERNAL_FORBIDDEN), or utoipa
  outside the JSON types' schema derives (SCHEMA_DERIVES_ALLOWED).

Exits 0 when the graph runs one way, 1 naming each cycle or edge that does not.
Python 3.11 standard library only.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

# An argument names another source tree (to try the check on a copy).
ROOT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "control-plane" / "src"

# Lowest first: a module may use its own layer and those below, never one above.
LAYERS: list[tuple[str, set[str]]] = [
    # The typed model, its rules and its storage: knows nothing of HTTP.
    ("catalogue", {"error", "domain", "model", "secrets", "tokens", "store", "catalogue"}),
    # The HTTP service over it: routes per resource, OpenAPI, snapshot publication, metrics,
    # the lease broker of fleet-wide counting.
    ("service", {"http", "metrics", "fleet"}),
    # What runs it: the server process, its listener, the CLI and the Envoy config it writes.
    ("front", {"server", "data_dir_lock", "listener", "envoy_config", "cli"}),
]

# External crates the catalogue layer must not name.
EXTERNAL_FORBIDDEN = {"axum", "utoipa_axum", "hyper", "hyper_util", "tower", "tower_http"}
# The catalogue modules whose JSON types still derive their OpenAPI schema (utoipa derives and
# attributes only, no document); no other catalogue module may name utoipa. Split into a crate,
# these derives become a feature, as core's `openapi` is.
SCHEMA_DERIVES_ALLOWED = {"model", "catalogue"}

PATH_RE = re.compile(r"\b(crate|super|self)((?:\s*::\s*[A-Za-z_][A-Za-z0-9_]*)+)")
MOD_DECL_RE = re.compile(r"^(\s*)(?:pub(?:\([^)]*\))?\s+)?mod\s+([a-z_][a-z0-9_]*)\s*\{")
USE_RE = re.compile(r"\buse\s+([^;]*);", re.S)
EXTERN_RE = re.compile(r"(?<![A-Za-z0-9_:])([a-z_][a-z0-9_]*)::")


def file_module(path: Path) -> tuple[str, ...]:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    return tuple(parts)


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    out = []
    for line in text.splitlines():
        # Good enough for this code base: no `//` inside the string literals that name paths.
        idx = line.find("//")
        if idx >= 0 and '"' not in line[:idx]:
            line = line[:idx]
        elif idx >= 0 and line.lstrip().startswith("//"):
            line = ""
        out.append(line)
    return "\n".join(out)


def expand_use_tree(tree: str) -> list[str]:
    """`a::{b, c::{self, d}}` -> ["a::b", "a::c", "a::c::d"] (aliases dropped)."""
    tree = re.sub(r"\s+as\s+[A-Za-z_][A-Za-z0-9_]*", "", tree)
    tree = re.sub(r"\s+", "", tree)

    def split_top(s: str) -> list[str]:
        parts, depth, cur = [], 0, ""
        for ch in s:
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
            else:
                cur += ch
        if cur:
            parts.append(cur)
        return parts

    def expand(prefix: str, s: str) -> list[str]:
        brace = s.find("{")
        if brace < 0:
            path = f"{prefix}{s}"
            if path.endswith("::self"):
                path = path[: -len("::self")]
            return [path]
        head = s[:brace]
        inner = s[brace + 1 : s.rfind("}")]
        result = []
        for part in split_top(inner):
            result.extend(expand(prefix + head, part))
        return result

    return expand("", tree)


def scopes(text: str, module: tuple[str, ...]) -> list[tuple[tuple[str, ...], str]]:
    """Splits a file into (module path, text) pieces, one per inline `mod x { … }` block."""
    pieces: list[tuple[tuple[str, ...], list[str]]] = [(module, [])]
    stack: list[tuple[str, tuple[str, ...]]] = []  # (closing indent, module)
    current = module
    for line in text.splitlines():
        m = MOD_DECL_RE.match(line)
        if m:
            current = current + (m.group(2),)
            stack.append((m.group(1), current))
            pieces.append((current, []))
            continue
        if stack and line.rstrip() == stack[-1][0] + "}":
            stack.pop()
            current = stack[-1][1] if stack else module
            pieces.append((current, []))
            continue
        pieces[-1][1].append(line)
    return [(mod, "\n".join(lines)) for mod, lines in pieces]


def resolve(raw: str, module: tuple[str, ...], modules: set[tuple[str, ...]]) -> tuple[str, ...] | None:
    segments = [s for s in re.split(r"\s*::\s*", raw.strip()) if s]
    base: list[str]
    if segments[0] == "crate":
        base, rest = [], segments[1:]
    elif segments[0] in ("super", "self"):
        base = list(module)
        rest = segments
        while rest and rest[0] in ("super", "self"):
            if rest[0] == "super":
                if not base:
                    return None
                base.pop()
            rest = rest[1:]
    else:
        return None
    path = tuple(base)
    deepest = path
    for seg in rest:
        path = path + (seg,)
        if path in modules:
            deepest = path
        else:
            break
    return deepest


def main() -> int:
    files = sorted(p for p in ROOT.rglob("*.rs") if p.name != "main.rs")
    modules = {file_module(p) for p in files}
    texts = {file_module(p): strip_comments(p.read_text()) for p in files}
    # Inline modules are modules too (so `super::` inside them resolves to the file).
    for mod, text in list(texts.items()):
        for inner, _ in scopes(text, mod):
            modules.add(inner)

    edges: dict[tuple[str, ...], set[tuple[str, ...]]] = {}
    externals: dict[tuple[str, ...], set[str]] = {}
    for mod, text in texts.items():
        for scope, body in scopes(text, mod):
            targets = edges.setdefault(mod, set())
            raws = []
            for use in USE_RE.finditer(body):
                tree = use.group(1)
                for path in expand_use_tree(tree):
                    if path.split("::")[0] in ("crate", "super", "self"):
                        raws.append(path)
                    else:
                        externals.setdefault(mod, set()).add(path.split("::")[0])
            body_wo_use = USE_RE.sub("", body)
            raws.extend(m.group(0) for m in PATH_RE.finditer(body_wo_use))
            for m in EXTERN_RE.finditer(body_wo_use):
                externals.setdefault(mod, set()).add(m.group(1))
            for raw in raws:
                target = resolve(raw, scope, modules)
                if target is not None:
                    # An inline module is part of its file.
                    while target not in texts and target:
                        target = target[:-1]
                    targets.add(target)

    failures: list[str] = []

    # Sibling cycles, at every level of the tree.
    parents = {m[:-1] for m in texts if m} | {()}
    for parent in sorted(parents):
        children = sorted({m[: len(parent) + 1] for m in texts if len(m) > len(parent) and m[: len(parent)] == parent})
        graph: dict[tuple[str, ...], set[tuple[str, ...]]] = {c: set() for c in children}
        witness: dict[tuple[tuple[str, ...], tuple[str, ...]], tuple[tuple[str, ...], tuple[str, ...]]] = {}
        for src, targets in edges.items():
            if src[: len(parent)] != parent or len(src) <= len(parent):
                continue
            a = src[: len(parent) + 1]
            for dst in targets:
                if dst[: len(parent)] != parent or len(dst) <= len(parent):
                    continue
                b = dst[: len(parent) + 1]
                if a != b:
                    graph[a].add(b)
                    witness.setdefault((a, b), (src, dst))
        for cycle, size in find_cycles(graph):
            steps = []
            for a, b in zip(cycle, cycle[1:] + cycle[:1]):
                src, dst = witness[(a, b)]
                steps.append(f"{name(src)} uses {name(dst)}")
            failures.append(
                f"cycle ({size} modules entangled): "
                + " -> ".join(name(c) for c in cycle + cycle[:1])
                + "".join(f"\n      {step}" for step in steps)
            )

    # Layers of the top-level modules.
    rank = {m: i for i, (_, ms) in enumerate(LAYERS) for m in ms}
    layer_name = {m: LAYERS[i][0] for m, i in rank.items()}
    top = sorted({m[0] for m in texts if m})
    for m in top:
        if m not in rank:
            failures.append(f"crate::{m} is in no layer: add it to LAYERS in {Path(__file__).name}")
    for src, targets in sorted(edges.items()):
        if not src or src[0] not in rank:
            continue
        for dst in sorted(targets):
            if dst and dst[0] in rank and rank[dst[0]] > rank[src[0]]:
                failures.append(
                    f"{name(src)} ({layer_name[src[0]]} layer) uses {name(dst)} "
                    f"({layer_name[dst[0]]} layer, above it)"
                )
        if rank[src[0]] == 0:
            for ext in sorted(externals.get(src, set()) & EXTERNAL_FORBIDDEN):
                failures.append(f"{name(src)} (catalogue layer) uses the web stack: {ext}")
            if "utoipa" in externals.get(src, set()) and src[0] not in SCHEMA_DERIVES_ALLOWED:
                failures.append(f"{name(src)} (catalogue layer) uses utoipa")

    if failures:
        print("control-plane layers do not run one way:", file=sys.stderr)
        for f in failures:
            print("  " + f, file=sys.stderr)
        return 1
    print(f"control-plane layers: {len(texts)} modules, no cycle, " + " -> ".join(n for n, _ in LAYERS))
    return 0


def name(mod: tuple[str, ...]) -> str:
    return "crate::" + "::".join(mod) if mod else "crate"


def find_cycles(graph: dict) -> list[list]:
    """One cycle per strongly connected component with more than one node (Tarjan)."""
    index: dict = {}
    low: dict = {}
    on_stack: set = set()
    stack: list = []
    sccs: list[list] = []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)

    cycles = []
    for comp in sccs:
        members = set(comp)
        start = min(comp)
        # Shortest cycle through `start` inside the component (BFS back to it).
        prev = {start: None}
        queue = [start]
        found = None
        while queue and found is None:
            nxt = []
            for v in queue:
                for w in sorted(graph[v] & members):
                    if w == start:
                        found = v
                        break
                    if w not in prev:
                        prev[w] = v
                        nxt.append(w)
                if found is not None:
                    break
            queue = nxt
        path = []
        v = found
        while v is not None:
            path.append(v)
            v = prev[v]
        path.reverse()
        # The shortest cycle through one member names the problem; the component's size says
        # how tangled the rest is.
        cycles.append((path, len(comp)))
    return cycles


if __name__ == "__main__":
    sys.exit(main())
