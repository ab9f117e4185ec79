"""Print the shape figures the maintainers track: the most parameters of any public function,
the longest functions, and the number of modules in pipelines/ (used in issue notes)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def functions(package: str):
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args
                count = len(args.posonlyargs) + len(args.args) + len(args.kwonlyargs)
                if args.args and args.args[0].arg in ("self", "cls"):
                    count -= 1
                yield f"{path.relative_to(ROOT)}:{node.name}", count, node.end_lineno - node.lineno + 1


def main() -> None:
    found = [f for package in ("wgan", "pipelines") for f in functions(package)]
    public = [f for f in found if not f[0].rsplit(":", 1)[1].startswith("_")]
    print("most parameters (public):", *sorted(public, key=lambda f: -f[1])[:4], sep="\n  ")
    print("longest functions:", *sorted(found, key=lambda f: -f[2])[:4], sep="\n  ")
    modules = [p for p in (ROOT / "pipelines").rglob("*.py") if p.name != "__init__.py"]
    print("modules in pipelines/:", len(modules))


if __name__ == "__main__":
    sys.exit(main())
