"""A PatchCore bundle fitted with --score-shifts 2 on OpenVINO (audit: the line stopped).

Its exported graph read the unshifted view's rows of the bank-search index with a Slice ``index[:B]``, which
OpenVINO 2026.4 dropped, so its GatherElements refused the (V x B, P) table ("Shapes {4,16} and {1,1} are not
consistent"): every frame failed. And ``auto`` timed that engine with an unguarded probe: the station crashed at
start with the traceback. Now the export takes those rows with a reshape (V, B, ...)[0], which OpenVINO runs, and
``auto`` leaves out an engine that loads a bundle but cannot score a frame, with a warning, and times the others."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable

import numpy as np
import pytest
import torch

from fair_edge.errors import ConfigError
from fair_edge.runtime import selection
from fair_edge.runtime.selection import BackendOptions, fastest_cpu

OPENVINO_GATHER_ERROR = ("Exception from src/inference/src/cpp/infer_request.cpp:224:\n"
                         "Exception from src/plugins/intel_cpu/src/node.cpp:794:\n"
                         "[CPU] GatherElements node with name '/GatherElements_1' Check 'output_shape.merge_into("
                         "output_shape, indices_pshape)' failed at gather_elements_shape_inference.hpp:56:\n"
                         "While validating node 'opset6::GatherElements /GatherElements_1':\n"
                         "Shapes {4,16} and {1,1} are not consistent, `data` and `indices` must have equal or "
                         "intersecting dimensions, except for the dimension at axis index.1\n")


# ----------------------------------------------------------------------------- auto and an engine that cannot infer
@dataclass(frozen=True)
class FakeScorer:
    """A CPU engine's scorer as ``fastest_cpu`` uses it: ``infer_frames`` returns ``score`` for every frame, or raises
    ``error``; its backend's ``close`` appends its name to ``closed``."""

    name: str
    closed: list = field(compare=False)
    score: float = 1.0
    error: Exception | None = None
    reason: str = "a fake engine"
    graph_threshold: None = None

    @property
    def backend(self) -> SimpleNamespace:
        return SimpleNamespace(name=self.name, close=lambda: self.closed.append(self.name))

    def infer_frames(self, frames: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        if self.error is not None:
            raise self.error
        return np.zeros((len(frames), 4, 4), np.float32), np.full(len(frames), self.score, np.float32)


def _engines(monkeypatch, **made: Callable) -> None:
    for name, make in made.items():
        monkeypatch.setitem(selection.BACKENDS, name, make)


BUNDLE = SimpleNamespace(root="bundles/pc-s2-fp32", image_size=8, build_command="fair-edge build run/final.pt")


def test_auto_leaves_out_a_cpu_engine_that_loads_the_bundle_but_cannot_score_a_frame(monkeypatch, caplog):
    closed = []
    _engines(monkeypatch, onnxruntime=lambda b, o: FakeScorer("onnxruntime", closed, score=14.5661),
             openvino=lambda b, o: FakeScorer("openvino", closed, error=RuntimeError(OPENVINO_GATHER_ERROR)))
    with caplog.at_level(logging.WARNING, logger="fair_edge.runtime.selection"):
        chosen = fastest_cpu(BUNDLE, BackendOptions())
    assert chosen.name == "onnxruntime" and closed == ["openvino"]
    assert "the only CPU engine that runs this bundle" in chosen.reason
    assert ("openvino left out: it cannot score a grey frame (RuntimeError: [CPU] GatherElements node with name "
            "'/GatherElements_1' Check") in chosen.reason
    assert "hpp:56: ... Shapes {4,16} and {1,1} are not consistent" in chosen.reason   # OpenVINO's last line: why
    assert "openvino cannot score a grey frame of bundle bundles/pc-s2-fp32" in caplog.text
    assert "Shapes {4,16} and {1,1} are not consistent" in caplog.text


class EngineFailure(Exception):
    """An engine's own error type that is no RuntimeError (ONNX Runtime's ``Fail`` derives from Exception only)."""


def test_auto_times_the_engines_that_run_and_names_each_one_that_cannot(monkeypatch):
    closed = []
    _engines(monkeypatch, onnxruntime=lambda b, o: FakeScorer("onnxruntime", closed, error=EngineFailure("no kernel")),
             openvino=lambda b, o: FakeScorer("openvino", closed, error=RuntimeError(OPENVINO_GATHER_ERROR)))
    with pytest.raises(ConfigError, match=r"no CPU backend could run bundles/pc-s2-fp32: onnxruntime left out: .*"
                                          r"EngineFailure: no kernel.*; openvino left out: .*GatherElements.*"
                                          r"Rebuild the bundle with `fair-edge build run/final.pt`"):
        fastest_cpu(BUNDLE, BackendOptions())
    assert closed == ["onnxruntime", "openvino"]

    closed.clear()   # both run: timed as before, and nothing left out
    _engines(monkeypatch, openvino=lambda b, o: FakeScorer("openvino", closed, score=1.0),
             onnxruntime=lambda b, o: FakeScorer("onnxruntime", closed, score=1.0))
    chosen = fastest_cpu(BUNDLE, BackendOptions())
    assert "fastest CPU engine here" in chosen.reason and "left out" not in chosen.reason and len(closed) == 1


def test_a_named_openvino_that_cannot_score_the_bundle_is_refused_at_start_naming_the_fixes(monkeypatch):
    """--backend openvino on a graph OpenVINO loads but cannot run: refused at start (the station would otherwise
    start and fail every frame until it faults), naming the bundle, OpenVINO's error and the rebuild command."""
    from fair_edge.errors import BundleError

    closed = []
    _engines(monkeypatch, openvino=lambda b, o: FakeScorer("openvino", closed, error=RuntimeError(OPENVINO_GATHER_ERROR)))
    monkeypatch.setattr(selection, "refuse_unlike_onnxruntime", lambda bundle, scorer: scorer)
    with pytest.raises(BundleError, match=r"backend openvino: OpenVINO loads bundle bundles/pc-s2-fp32 but cannot "
                                          r"score a frame with it \(RuntimeError: .*Shapes \{4,16\} and \{1,1\}.*"
                                          r"Rebuild the bundle with `fair-edge build run/final.pt`.*--backend "
                                          r"onnxruntime"):
        selection.select_backend(SimpleNamespace(**vars(BUNDLE), preprocess=SimpleNamespace(tiling=None)),
                                 "openvino")
    assert closed == ["openvino"]
    _engines(monkeypatch, openvino=lambda b, o: FakeScorer("openvino", closed, score=2.0))
    chosen = selection.select_backend(SimpleNamespace(**vars(BUNDLE), preprocess=SimpleNamespace(tiling=None)),
                                      "openvino")
    assert chosen.name == "openvino" and closed == ["openvino"]   # one that runs is kept open


# ----------------------------------------------------------------------------- the score_shifts=2 graph on OpenVINO
def _shifted_detector(score_shifts: int):
    """(ModelSpec, detector) of a 32 px PatchCore with ``score_shifts`` and re-weighting, its bank the patch features
    of a grey-ish frame (64 rows, 9 neighbours)."""
    from fair_edge.models.patchcore.coreset import bank_neighbours
    from fair_edge.models.patchcore.model import PatchcoreSettings
    from fair_edge.models.registry import ModelSpec
    from fair_edge.preprocess import PreprocessConfig

    torch.manual_seed(0)
    spec = ModelSpec("patchcore", PreprocessConfig(image_size=32),
                     PatchcoreSettings(embed_dim=32, smooth_sigma=1.0, bank_max=64, score_shifts=score_shifts))
    det = spec.build().eval()
    with torch.no_grad():
        normal = torch.rand(4, 3, 32, 32) * 0.1 + 0.45
        bank = det.patch_features(normal).flatten(2).transpose(1, 2).reshape(-1, spec.settings.feature_dim)[:64]
        det.set_bank(bank.contiguous(), bank_neighbours(bank.contiguous(), 9))
    assert det.memory.can_reweight
    return spec, det


@pytest.mark.parametrize("batch", [1, 3])
def test_a_score_shifts_2_patchcore_graph_runs_on_openvino_like_onnxruntime_and_torch(batch, tmp_path):
    pytest.importorskip("openvino")
    from fair_edge.export.onnx_export import export_onnx
    from fair_edge.runtime.backends import OnnxRuntimeBackend
    from fair_edge.runtime.openvino import OpenVinoBackend

    spec, det = _shifted_detector(2)
    path = export_onnx(spec, det, tmp_path / "model.fp32.onnx")
    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    x[:, :, 10:18, 12:20] = 1.0   # a bright square: the worst patch (whose bank row is re-weighted) is one view's
    with torch.no_grad():
        torch_map, torch_score = (t.numpy() for t in det(x))
    ort = OnnxRuntimeBackend(path, spec.input_names).infer({"colour": x})
    openvino = OpenVinoBackend(path, spec.input_names)
    try:
        ov = openvino.infer({"colour": x})
    finally:
        openvino.close()
    np.testing.assert_allclose(ort["score"], torch_score, atol=1e-4, rtol=0)
    np.testing.assert_allclose(ort["anomaly_map"], torch_map, atol=1e-4, rtol=0)
    np.testing.assert_allclose(ov["score"], ort["score"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(ov["anomaly_map"], ort["anomaly_map"], atol=1e-4, rtol=0)
