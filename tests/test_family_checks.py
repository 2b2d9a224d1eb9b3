"""The checks every model family of the registry must pass, run once per family: its tiny fitted model
(conftest's ``<family>_run`` / ``<family>_bundles``) round-trips through the checkpoint and each precision's
bundle with parity and a threshold, and the CPU backends agree on its bundle. Family-specific checks (the
graph's structure, INT8 scope, the memory bank) stay in each family's own test file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from export_fixtures import make_frames

from fair_edge.export.bundle import load_bundle
from fair_edge.models.checkpoint import load_checkpoint
from fair_edge.models.registry import FAMILIES, ModelSpec
from fair_edge.runtime.selection import select_backend


@pytest.fixture(params=sorted(FAMILIES))
def family(request) -> str:
    return request.param


def fixture_of(request, family: str, what: str):
    """conftest's ``<family>_<what>``; a family in the registry without one fails here, saying what to add."""
    name = f"{family}_{what}"
    try:
        return request.getfixturevalue(name)
    except pytest.FixtureLookupError:
        pytest.fail(f"family {family!r} is in the registry but tests/conftest.py has no `{name}` fixture "
                    f"(a tiny fitted model of it, like lgfdr_{what}); add one so the family checks run on it")


def test_checkpoint_holds_the_family_and_its_spec_round_trips(family, request):
    path = fixture_of(request, family, "run")[0]
    ckpt = load_checkpoint(path)
    assert ckpt.model.family == family and ckpt.train_state is None
    payload = torch.load(path, map_location="cpu", weights_only=False)
    stored = {key: payload[key] for key in ("family", "family_version", "settings", "preprocess")}
    assert ckpt.model.to_dict() == stored   # the spec as written in the file reads back unchanged
    assert ModelSpec.from_dict(stored) == ckpt.model
    assert ckpt.model.input_names == tuple(s.name for s in FAMILIES[family].inputs(ckpt.model.preprocess))


def test_bundles_round_trip_with_parity_and_threshold(family, request):
    model = load_checkpoint(fixture_of(request, family, "run")[0]).model
    bundles = fixture_of(request, family, "bundles")
    assert sorted(bundles) == ["fp16", "fp32", "int8"]
    for precision, result in bundles.items():
        b = load_bundle(result.bundle.root)
        assert b == result.bundle and b.model == model and b.precision == precision, precision
        assert b.threshold is not None and b.threshold.n_normal == 12, precision
        assert result.parity_max_abs <= 1e-4, precision   # the build refuses more; here the measured value
    assert bundles["fp16"].delta.score_spearman > 0.95


def test_cpu_backends_agree_on_the_bundle(family, request):
    b = fixture_of(request, family, "bundles")["fp32"].bundle
    frames = make_frames(3, seed=7, defect=True)
    ort_maps, ort_scores = select_backend(b, "onnxruntime").infer_frames(frames)
    torch_maps, torch_scores = select_backend(b, "torch-cpu").infer_frames(frames)
    size = b.model.preprocess.image_size
    assert ort_maps.shape == torch_maps.shape == (3, size, size) and ort_scores.shape == (3,)
    np.testing.assert_allclose(ort_maps, torch_maps, atol=1e-4, rtol=0)
    np.testing.assert_allclose(ort_scores, torch_scores, atol=1e-4, rtol=0)


def test_the_cpu_int8_graph_scores_alike_on_both_cpu_engines(family, request):
    """ONNX Runtime and OpenVINO run the same CPU INT8 graph, and the bundle's CPU threshold was calibrated on ONNX
    Runtime; `auto` picks whichever is faster. OpenVINO scored the PatchCore graph 10-20 x too high (every part NG):
    its int8 average pool of a Q/DQ tap with the zero padding counted."""
    pytest.importorskip("openvino")
    b = fixture_of(request, family, "bundles")["int8"].bundle
    frames = make_frames(3, seed=7, defect=True)
    _, ort_scores = select_backend(b, "onnxruntime").infer_frames(frames)
    _, ov_scores = select_backend(b, "openvino").infer_frames(frames)
    np.testing.assert_allclose(ov_scores, ort_scores, rtol=0.05, atol=0.02 * float(np.abs(ort_scores).max()))
