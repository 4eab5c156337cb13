"""tollgate's benchmark harness: `bench/run` runs its sections and writes BENCHMARKS.md.

Each section (request cost, exactness; propagation and scale later) is one module with a
`run(bench) -> SectionReport` function, listed in `__main__.SECTIONS`.
"""
