"""The model-family seam: registry, ModelSpec round trip, and files written before families existed
(format version 1 checkpoints and bundles, FAIR without a ``family`` key) still load and score the same."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from export_fixtures import MODEL, make_frames

from fair_edge.models.checkpoint import FORMAT, load_checkpoint
from fair_edge.errors import ConfigError
from fair_edge.export.build import BuildOptions, build_bundle
from fair_edge.export.bundle import MANIFEST, load_bundle, sha256_file
from fair_edge.models.registry import FAMILIES, ModelSpec, get_family
from fair_edge.models.tensors import ANOMALY_MAP, OUTPUT_NAMES, SCORE
from fair_edge.runtime.selection import select_backend


def test_registry_names_families_and_suggests_on_typos():
    assert "fair" in FAMILIES and get_family(" FAIR ") is FAMILIES["fair"]
    with pytest.raises(ConfigError, match="Did you mean 'fair'"):
        get_family("fiar")
    for key, family in FAMILIES.items():
        assert family.key == key and family.int8_scope and family.summary
        assert all(s.startswith(family.network_scope) for s in family.int8_scope)


def test_spec_round_trip_and_refusals():
    assert ModelSpec.from_dict(MODEL.to_dict()) == MODEL
    assert MODEL.input_names == ("highpass", "colour") and MODEL.describe() == "FAIR width 8"
    newer = dict(MODEL.to_dict(), family_version=MODEL.impl.version + 1)
    with pytest.raises(ConfigError, match="newer than this fair-edge reads"):
        ModelSpec.from_dict(newer)
    with pytest.raises(ConfigError, match="needs FairSettings settings"):
        ModelSpec("fair", MODEL.preprocess, {"width": 8})


def _legacy_checkpoint(path, ckpt) -> None:
    """What fair-edge wrote before model families: format version 1, width and scoring at the top."""
    torch.save({"format": FORMAT, "format_version": 1, "fair_edge_version": "0.1.0",
                "preprocess": ckpt.preprocess.to_dict(), "width": ckpt.settings.width,
                "scoring": ckpt.settings.scoring.to_dict(), "state_dict": ckpt.state_dict,
                "data_summary": ckpt.data_summary, "train_state": None}, path)


def test_version_1_checkpoint_loads_as_fair_and_scores_the_same(tiny_ckpt_path, tmp_path):
    ckpt = load_checkpoint(tiny_ckpt_path)
    _legacy_checkpoint(tmp_path / "v1.pt", ckpt)
    old = load_checkpoint(tmp_path / "v1.pt")
    assert old.model == ckpt.model and old.family == "fair" and old.data_summary == ckpt.data_summary
    inputs = [torch.rand(2, *s.shape()[1:], generator=torch.Generator().manual_seed(1)) for s in MODEL.inputs]
    with torch.no_grad():
        for a, b in zip(old.build_detector()(*inputs), ckpt.build_detector()(*inputs)):
            assert torch.equal(a, b)


def _legacy_bundle(root) -> None:
    """Rewrite a bundle as version 1 did: model {width, in_channels, image_size}, top-level preprocess and
    scoring, graph inputs/outputs lists, a version-1 weights.pt; checksums recomputed."""
    data = json.loads((root / MANIFEST).read_text())
    data.pop("metadata_sha256", None)  # format 1 had no checksum of its own settings
    model = data.pop("model")
    pre, settings = model["preprocess"], model["settings"]
    data.update(format_version=1, preprocess=pre, scoring=settings["scoring"],
                model={"width": settings["width"], "in_channels": 1, "image_size": pre["image_size"]})
    data["graph"].update(inputs=["highpass", "colour"], outputs=list(OUTPUT_NAMES))
    _legacy_checkpoint(root / "weights.pt", load_checkpoint(root / "weights.pt"))
    data["files"] = {rel: {"sha256": sha256_file(root / rel), "bytes": (root / rel).stat().st_size} for rel in data["files"]}
    (root / MANIFEST).write_text(json.dumps(data, indent=2))


def test_version_1_bundle_loads_and_every_cpu_backend_scores_it(tiny_ckpt_path, tmp_path):
    frames = make_frames(4, seed=3)
    new = build_bundle(load_checkpoint(tiny_ckpt_path), tmp_path / "b", BuildOptions("fp32"), normal_frames=frames).bundle
    reference = select_backend(new, "onnxruntime").infer_frames(frames)
    _legacy_bundle(tmp_path / "b")
    old = load_bundle(tmp_path / "b")
    assert json.loads((tmp_path / "b" / MANIFEST).read_text())["format_version"] == 1
    assert old.model == new.model and old.threshold == new.threshold
    for name in ("onnxruntime", "torch-cpu"):
        maps, scores = select_backend(old, name).infer_frames(frames)
        np.testing.assert_allclose(scores, reference[1], atol=1e-5)
        np.testing.assert_allclose(maps, reference[0], atol=1e-5)


def test_backends_return_the_same_named_outputs(tiny_ckpt_path, tmp_path):
    b = build_bundle(load_checkpoint(tiny_ckpt_path), tmp_path / "b", BuildOptions("fp32")).bundle
    frames = make_frames(3, seed=4)
    outs = {}
    for name in ("onnxruntime", "torch-cpu"):
        scorer = select_backend(b, name)
        outs[name] = scorer.backend.infer(scorer.preprocess(frames))
        assert set(outs[name]) == {ANOMALY_MAP, SCORE}
        assert outs[name][ANOMALY_MAP].shape == (3, 1, 32, 32) and outs[name][SCORE].shape == (3,)
    np.testing.assert_allclose(outs["onnxruntime"][SCORE], outs["torch-cpu"][SCORE], atol=1e-5)
