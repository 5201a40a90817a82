"""A short text summary of a py-spy raw (collapsed stacks) profile: where the samples went.

    .venv/bin/python bench/pyspy_summary.py PROFILE.txt [--jobs N] [--top 25] [--root FRAME]

py-spy's raw format is one line per distinct stack, ``frame;frame;...;leaf COUNT``. Printed:
the samples (and, with ``--jobs``, samples per job), the share of samples *in* each function
(inclusive: the function or anything it called; line numbers dropped), the share of samples
whose *leaf* is in each function (self), the share per library (the deepest frame's
package: where the CPU itself was spent), and the share per innermost gantryd function (what
gantryd code each sample was spent for, whatever library it was in). ``--root`` keeps the stacks
whose outermost frame starts with it: ``_run_module_as_main`` is the trio thread,
``Thread._bootstrap`` the worker threads. Small enough to commit beside the figures.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_LINE = re.compile(r":\d+\)$")


def _frames(stack: str) -> list[str]:
    return [_LINE.sub(")", f) for f in stack.split(";")]


def _package(frame: str) -> str:
    """``docker``, ``trio``, ``agent/container``... from ``func (path/to/file.py)``."""
    path = frame.rsplit("(", 1)[-1].rstrip(")")
    if path.startswith("agent/"):
        return "/".join(path.split("/")[:2]).removesuffix(".py")
    return path.split("/", 1)[0].removesuffix(".py")


def _outside(frames: list[str]) -> str:
    """A sample with no gantryd frame below the entry point: trio's scheduler and I/O loop, a
    thread's idle machinery, or a library task (hypercorn's HTTP server)."""
    for f in frames:
        if _package(f) == "hypercorn":
            return "(hypercorn, outside gantryd's app)"
    return f"({_package(frames[-1])}, no gantryd frame)"


def summarise(text: str, jobs: int | None, top: int, root: str = "") -> str:
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    package: Counter[str] = Counter()
    owner: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = _frames(stack)
        if not frames[0].startswith(root):
            continue
        total += n
        for f in set(frames):
            inclusive[f] += n
        leaf[frames[-1]] += n
        package[_package(frames[-1])] += n
        ours = [
            f
            for f in frames
            if _package(f).startswith("agent/")
            and not f.endswith(("agent/cli.py)", "agent/__main__.py)"))
        ]
        owner[ours[-1] if ours else _outside(frames)] += n
    out = [f"samples: {total}" + (f", {total / jobs:.1f} per job" if jobs else "")]

    def table(title: str, counts: Counter[str]) -> None:
        out.append(f"\n{title}")
        for name, n in counts.most_common(top):
            out.append(f"  {100 * n / total:5.1f} %  {name}")

    table("inclusive (in the function or below it)", inclusive)
    table("self (the sampled leaf)", leaf)
    table("by package of the leaf frame", package)
    table("by the innermost gantryd frame (what gantryd code the CPU was spent for)", owner)
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--jobs", type=int)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--root", default="", help="only stacks whose outermost frame starts so")
    args = parser.parse_args()
    print(summarise(args.profile.read_text(), args.jobs, args.top, args.root))


if __name__ == "__main__":
    main()
