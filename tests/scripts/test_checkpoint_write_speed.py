"""The checkpoint write benchmark saves the same checkpoint both ways, each in a fresh process (no timing asserted)."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "scripts" / "checkpoint_write_speed.py"


def test_both_writers_save_a_checkpoint_of_the_size_asked_and_leave_nothing(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), "--gigabytes", "0.03", "--pairs", "1", "--folder",
                          str(tmp_path)], check=True, capture_output=True, text=True).stdout
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith(("| page cache", "| write-behind"))]
    assert [row[0] for row in rows] == ["| page cache", "| write-behind"]
    assert {row[1] for row in rows} == {"0.03"}, "both saved the same checkpoint"
    assert list(tmp_path.iterdir()) == [], "each save's folder is removed"
