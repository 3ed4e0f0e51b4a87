"""What the CLI prints when its output is a pipe or a log, not a terminal."""

from __future__ import annotations

import os
import subprocess
import sys


def test_a_long_message_is_one_line_in_a_pipe() -> None:
    # rich breaks lines at 80 columns when it sees no terminal; a log or `| grep` needs the line whole.
    done = subprocess.run(
        [sys.executable, "-m", "reverie.cli", "remember", "only-a-directory"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "", "TERM": "dumb"},
        timeout=120,
    )
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if "local run directory" in line]
    assert len(lines) == 1 and len(lines[0]) > 80, done.stderr
    assert lines[0].rstrip().endswith("and the files"), done.stderr
