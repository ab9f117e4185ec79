"""What the tests read in a command's output."""

from __future__ import annotations


def assert_one_line_error(result, *fragments: str) -> str:
    """A CliRunner result that is bad input handled as designed: exit 2 and one ``error:`` line
    holding every fragment; returns the line."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]
