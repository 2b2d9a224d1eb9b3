"""fair_edge.shortages: what the machine ran short of, read by the CLI's one-line errors, tune and a PatchCore fit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# a process that set its address-space limit (ulimit -v) below the size it already has, then asks what is left
PAST_THE_LIMIT = """
import resource
from fair_edge.shortages import _read_fields, available_memory
size = _read_fields("/proc/self/status")["VmSize"] * 1024
resource.setrlimit(resource.RLIMIT_AS, (size - 64 * 2**20, resource.getrlimit(resource.RLIMIT_AS)[1]))
print(available_memory())
"""


def test_an_address_space_limit_already_passed_leaves_0_bytes_not_a_negative_figure():
    """A process larger than its ulimit -v (the limit lowered after it grew) was told a negative figure, clamped only
    in the CLI's line ("0 MiB"); a PatchCore fit or any other reader got the negative bytes. Now it is 0."""
    done = subprocess.run([sys.executable, "-c", PAST_THE_LIMIT], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(0, 'the address-space limit (ulimit -v)')", done.stdout
