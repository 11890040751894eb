"""Running the installed `stepgrid` command as a member of the public would, and reading its one error line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

STEPGRID = Path(sys.executable).with_name("stepgrid")


def stepgrid(*argv: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`stepgrid argv...` in a clean environment (no STEPGRID_* from outside, no .env in `cwd`)."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith("STEPGRID_")}
    return subprocess.run(
        [str(STEPGRID), *argv], cwd=cwd, env={**clean, **env}, capture_output=True, text=True, timeout=120
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one `stepgrid: ...` line a refused command printed (its log lines aside), with no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("stepgrid:")]
    assert len(lines) == 1, result.stderr
    return lines[0]
