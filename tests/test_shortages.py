"""fair_edge.shortages: what the machine ran short of, read by the CLI's one-line errors, tune and a PatchCore fit."""

from __future__ import annotations

import builtins
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.parametrize("failure", [MemoryError("out of memory opening the file"),
                                     UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")])
def test_the_out_of_memory_line_prints_when_reading_the_memory_left_fails(monkeypatch, failure):
    """Right after an allocation failed, reading what is left can fail too (psutil missing, /proc/meminfo's read
    raising MemoryError, a file that does not decode): out_of_memory_line raised that error instead of its line, so
    the command ended in a traceback. Now the line is printed, saying why no figure is given."""
    from fair_edge.cli.common import out_of_memory_line

    real_open = builtins.open

    def failing_open(path, *args, **kwargs):
        if str(path).startswith(("/proc/", "/sys/")):
            raise failure
        return real_open(path, *args, **kwargs)

    monkeypatch.setitem(sys.modules, "psutil", None)   # psutil missing: /proc/meminfo is read
    monkeypatch.setattr(builtins, "open", failing_open)
    line = out_of_memory_line(MemoryError("DefaultCPUAllocator: can't allocate memory"), "train_command")
    assert line == (f"train ran out of memory: DefaultCPUAllocator: can't allocate memory; the memory available could "
                    f"not be told ({type(failure).__name__} reading it). Free memory (stop other programs) or use a "
                    f"machine with more memory, then run it again.")
