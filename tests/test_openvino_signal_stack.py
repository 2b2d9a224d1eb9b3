"""A Ctrl-C or SIGTERM after OpenVINO graphs were compiled and freed out of order killed the process with SIGSEGV.

OpenVINO's CPU plugin points the compiling thread's alternate signal stack at memory its ``Core`` frees later, and
puts back at that free the stack it found. With two graphs alive at once and the first freed first (a swap, a build
that calibrates several graphs), the thread was left on freed memory; Python runs its handlers there
(``SA_ONSTACK``), so the next signal crashed with no traceback (found by the full suite: a test that raises SIGINT,
run after one that loads three OpenVINO backends, died with exit 139). ``OpenVinoGraph`` now compiles inside
``signal_stack.kept_signal_stack``.
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fair_edge import signal_stack

ROOT = Path(__file__).resolve().parents[1]


def test_kept_signal_stack_puts_back_the_stack_a_call_replaced():
    """The body points the thread at a stack of its own (as the plugin does); after it, the thread's is back."""
    before = signal_stack.signal_stack()
    if before is None:
        pytest.skip("no sigaltstack in this C library")
    memory = ctypes.create_string_buffer(64 * 1024)
    own = signal_stack._StackT(ctypes.addressof(memory), 0, len(memory))
    with signal_stack.kept_signal_stack():
        assert signal_stack._SIGALTSTACK(ctypes.byref(own), None) == 0
        assert signal_stack.signal_stack()[0] == ctypes.addressof(memory)
    assert signal_stack.signal_stack() == before


def tiny_graph(path: Path) -> Path:
    """An ONNX graph with the bundle's output names: image (1, 3, 8, 8) -> anomaly_map (1, 1, 8, 8), score (1,)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    nodes = [helper.make_node("ReduceMean", ["image"], ["anomaly_map"], axes=[1], keepdims=1),
             helper.make_node("ReduceMax", ["anomaly_map"], ["score"], axes=[1, 2, 3], keepdims=0)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, [1, 1, 8, 8]),
                               helper.make_tensor_value_info("score", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def test_graphs_freed_out_of_order_leave_the_thread_its_own_signal_stack(tmp_path):
    pytest.importorskip("openvino")
    from fair_edge.calibration.openvino_graph import OpenVinoGraph

    onnx_path = tiny_graph(tmp_path / "tiny.onnx")
    before = signal_stack.signal_stack()
    first = OpenVinoGraph(onnx_path, ["image"])
    second = OpenVinoGraph(onnx_path, ["image"])
    del first     # freed first, as the old bundle of a swap
    assert signal_stack.signal_stack() == before
    del second
    assert signal_stack.signal_stack() == before


def test_a_ctrl_c_after_graphs_freed_out_of_order_is_a_keyboard_interrupt_not_a_crash(tmp_path):
    """In a child process (a crash must not take the test run with it): compile two graphs, free the first, then
    the second, raise SIGINT; before the fix the child died of SIGSEGV (exit -11)."""
    pytest.importorskip("openvino")
    onnx_path = tiny_graph(tmp_path / "tiny.onnx")
    child = textwrap.dedent(f"""
        import gc, signal, sys
        from fair_edge.calibration.openvino_graph import OpenVinoGraph
        first = OpenVinoGraph({str(onnx_path)!r}, ["image"])
        second = OpenVinoGraph({str(onnx_path)!r}, ["image"])
        del first; gc.collect()
        del second; gc.collect()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            print("stopped by Ctrl-C")
    """)
    done = subprocess.run([sys.executable, "-c", child], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.strip() == "stopped by Ctrl-C"
