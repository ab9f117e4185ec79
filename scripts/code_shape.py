"""The shape rule of the code outside the tests: no function over MAX_LINES lines, none with more
than MAX_PARAMS parameters (``self``/``cls`` not counted). `tests/test_code_shape.py` holds the
suite to it; run this to see the figures the maintainers track.

    .venv/bin/python scripts/code_shape.py
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 80
MAX_PARAMS = 8
# Everything but the tests: the library, the stages, the benchmarks, these scripts and infra's Python.
CHECKED = ("wgan", "pipelines", "benchmarks", "scripts", "infra")


@dataclass(frozen=True)
class Function:
    where: str  # path:line name
    params: int
    lines: int


def functions(root: Path = ROOT, packages: tuple[str, ...] = CHECKED):
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    args = node.args
                    count = len(args.posonlyargs) + len(args.args) + len(args.kwonlyargs)
                    if args.args and args.args[0].arg in ("self", "cls"):
                        count -= 1
                    yield Function(f"{path.relative_to(root)}:{node.lineno} {node.name}", count,
                                   node.end_lineno - node.lineno + 1)


def violations(root: Path = ROOT, packages: tuple[str, ...] = CHECKED) -> list[str]:
    """One line per function over the limits, naming it and what to do."""
    out = []
    for f in functions(root, packages):
        if f.lines > MAX_LINES:
            out.append(f"{f.where}: {f.lines} lines (at most {MAX_LINES}): split it into named steps")
        if f.params > MAX_PARAMS:
            out.append(f"{f.where}: {f.params} parameters (at most {MAX_PARAMS}): pass a typed object")
    return out


def main() -> int:
    found = list(functions())
    print("most parameters:", *sorted(found, key=lambda f: -f.params)[:4], sep="\n  ")
    print("longest functions:", *sorted(found, key=lambda f: -f.lines)[:4], sep="\n  ")
    modules = [p for p in (ROOT / "pipelines").rglob("*.py") if p.name != "__init__.py"]
    print("modules in pipelines/:", len(modules))
    problems = violations()
    print(*problems, sep="\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
