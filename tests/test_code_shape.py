"""The shape rule holds from now on: no function outside the tests over 80 lines or with more
than 8 parameters (`scripts/code_shape.py`)."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def code_shape():
    spec = importlib.util.spec_from_file_location("code_shape", ROOT / "scripts" / "code_shape.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


def test_no_function_outside_the_tests_is_over_80_lines_or_8_parameters():
    assert code_shape().violations() == []


def test_the_rule_catches_a_long_function_and_a_wide_one(tmp_path):
    shape = code_shape()
    package = tmp_path / "pkg"
    package.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(80))
    (package / "m.py").write_text(textwrap.dedent("""
        class C:
            def fine(self, a, b, c, d, e, f, g, h):
                return a
        def wide(a, b, c, d, e, f, g, h, *, i):
            return a
        def long():
        """) + body + "\n")
    found = shape.violations(tmp_path, ("pkg",))
    assert len(found) == 2, found
    assert "m.py:5 wide: 9 parameters" in found[1] or "m.py:5 wide: 9 parameters" in found[0]
    assert any("long: 81 lines" in line for line in found)

