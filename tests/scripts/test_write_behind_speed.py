"""The write benchmark writes the same file both ways, each in a fresh process (no timing asserted)."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "scripts" / "write_behind_speed.py"


@pytest.mark.parametrize("file", ["checkpoint", "weights"])
def test_both_writers_write_a_file_of_the_size_asked_and_leave_nothing(tmp_path, file):
    out = subprocess.run([sys.executable, str(SCRIPT), "--file", file, "--gigabytes", "0.03", "--pairs", "1",
                          "--folder", str(tmp_path)], check=True, capture_output=True, text=True).stdout
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith(("| page cache", "| write-behind"))]
    assert [row[0] for row in rows] == ["| page cache", "| write-behind"]
    assert {row[1] for row in rows} == {"0.03"}, "both wrote the same data"
    assert list(tmp_path.iterdir()) == [], "each write's folder is removed"
