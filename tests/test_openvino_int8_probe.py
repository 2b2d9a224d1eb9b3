"""A named OpenVINO backend on an INT8 bundle built before bb4c96d: its CPU graph's average pool reads a Q/DQ copy
of its input, which OpenVINO scores 10-20 x too high (every part NG). ``auto`` leaves OpenVINO out on such a
bundle; `--backend openvino` / `backend: openvino` ran it silently. It is refused now, naming the bundle, both
scores of the grey probe frame and the rebuild command; a bundle built since is not probed at all."""

from __future__ import annotations

from dataclasses import replace

import pytest
from export_fixtures import make_frames

from fair_edge.calibration import int8_cpu
from fair_edge.errors import BundleError
from fair_edge.export.build import BuildOptions, build_bundle
from fair_edge.models.checkpoint import load_checkpoint
from fair_edge.runtime import selection
from fair_edge.runtime.selection import select_backend

pytest.importorskip("openvino")
from fair_edge.runtime import openvino  # noqa: E402  (the backend's module: needs OpenVINO, skipped without it)


def int8_bundle(final, out):
    """The tiny PatchCore model's INT8 bundle at ``out``, with the command that rebuilds it as the CLI records it."""
    options = BuildOptions("int8", max_batch=4, engine=False, command=f"fair-edge build {final} --int8 --out {out}")
    return build_bundle(load_checkpoint(final), out, options, calib_frames=make_frames(12, seed=100),
                        normal_frames=make_frames(12, seed=5)).bundle


@pytest.fixture(scope="module")
def int8_bundles(patchcore_run, tmp_path_factory):
    """(a PatchCore INT8 bundle built as before bb4c96d, one built now): the build before that commit was this
    build without its last step, ``pool_float_taps`` (the commit added only that call to the CPU INT8 graph)."""
    root = tmp_path_factory.mktemp("int8-probe")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(int8_cpu, "pool_float_taps", lambda path: 0)
        old = int8_bundle(patchcore_run[0], root / "old")
    return old, int8_bundle(patchcore_run[0], root / "new")


def test_a_named_openvino_refuses_an_int8_graph_built_before_the_float_tap_fix(int8_bundles):
    old, _ = int8_bundles
    with pytest.raises(BundleError) as refused:
        select_backend(old, "openvino")
    message = str(refused.value)
    pools = openvino.dequantised_pools(old.cpu_onnx_path)
    assert pools and all("AveragePool" in p for p in pools)   # the graph's shape before the fix
    assert str(old.root) in message and old.cpu_onnx_path.name in message and pools[0] in message
    assert "a grey frame scores" in message and "on OpenVINO and" in message and "on ONNX Runtime" in message
    assert f"Rebuild the bundle with `{old.build_command}`" in message and "--backend onnxruntime" in message
    with pytest.raises(BundleError, match="Rebuild the bundle with `fair-edge build CHECKPOINT --int8 --out BUNDLE`"):
        select_backend(replace(old, build_command=""), "openvino")   # built before bundles recorded their command
    assert select_backend(old, "onnxruntime").backend.name == "onnxruntime"   # the engine it was calibrated on runs
    assert "openvino left out" in select_backend(old, "auto").reason           # as auto already did


def test_a_named_openvino_runs_an_int8_bundle_built_now_without_probing_it(int8_bundles, monkeypatch):
    """The check costs a correct bundle a scan of its graph's nodes: no ONNX Runtime session, no probe frame."""
    _, new = int8_bundles
    def no_probe(*args, **kwargs):
        raise AssertionError("a bundle built since bb4c96d was probed")

    monkeypatch.setattr(selection, "probe", no_probe)
    scorer = select_backend(new, "openvino")
    assert scorer.backend.name == "openvino" and scorer.graph == new.cpu_onnx_path.name
    scorer.backend.close()
    assert openvino.dequantised_pools(new.cpu_onnx_path) == []
