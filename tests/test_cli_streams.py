"""A command started with a standard stream closed (a supervisor's or a shell's `2>&-`) runs with /dev/null there:
otherwise the first file opened takes the free descriptor (a library's read-only /dev/null during the imports, or a
station's log file), and what C libraries or Python print to stderr fails or lands in that file."""

from __future__ import annotations

import os
import subprocess
import sys

CHILD = """
import os
import fair_edge.cli                     # the console script's first import
os.write(2, b"to stderr\\n")              # EBADF on a closed or read-only descriptor 2
log = open(os.path.join(os.environ["OUT"], "log.txt"), "w")
print(log.fileno())
"""


def test_a_closed_stderr_is_dev_null_before_the_command_line_imports_anything(tmp_path):
    r = subprocess.run([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True, timeout=300,
                       env={**os.environ, "OUT": str(tmp_path)}, preexec_fn=lambda: os.close(2))
    assert r.returncode == 0, r.stdout
    assert int(r.stdout.split()[-1]) > 2                 # a file opened later never becomes stderr
    assert (tmp_path / "log.txt").read_text() == ""
