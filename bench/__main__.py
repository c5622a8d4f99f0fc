"""``python -m bench [NAME ...]``: run the benchmarks (all by default) and keep their results in bench/results/."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ["synth", "ingest", "loader", "score"]


def main(argv: list[str]) -> int:
    names = [a for a in argv if not a.startswith("-")] or BENCHMARKS
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; known: {BENCHMARKS}", file=sys.stderr)
        return 2
    options = [a for a in argv if a.startswith("-")]
    for name in names:
        importlib.import_module(f"bench.{name}").main(options if len(names) == 1 else [])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
