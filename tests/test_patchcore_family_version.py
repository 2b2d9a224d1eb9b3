"""PatchCore's settings version on an upgrade and a rollback: checkpoints and bundles are written as family_version 2,
which a release that reads only 1 refuses by name (releases before it dropped the settings they lacked unread, e.g.
local_pad and score_shifts, and scored otherwise); version 1 files load and score as before; and a settings key this
release does not know (a newer release's) is refused naming it, for every family, never dropped."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from export_fixtures import make_frames

from fair_edge.errors import CheckpointError, ConfigError
from fair_edge.export.build import BuildOptions, build_bundle
from fair_edge.export.bundle import load_bundle, model_manifest
from fair_edge.models.checkpoint import Checkpoint, load_checkpoint
from fair_edge.models.fair.family import FairSettings
from fair_edge.models.lgfdr.model import LgfdrSettings
from fair_edge.models.patchcore.family import PatchcoreFamily
from fair_edge.models.patchcore.model import PatchcoreSettings
from fair_edge.models.registry import FAMILIES, ModelSpec
from fair_edge.runtime.selection import select_backend

# the PatchCore settings fair-edge 43b383b (2026-12-02) wrote, all at family_version 1
SETTINGS_OF_43B383B = ("backbone", "embed_dim", "coreset_ratio", "bank_max", "reweight", "neighbours", "smooth_sigma",
                       "taps", "local_windows", "score_top_k")


def _payload(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _scores(ckpt, frames: torch.Tensor) -> torch.Tensor:
    """(N,) float32 scores of ``ckpt``'s detector on ``frames`` (N, 3, S, S) float32 RGB [0, 1], CPU."""
    with torch.no_grad():
        return ckpt.build_detector()(frames)[1]


def test_checkpoints_and_bundles_are_written_as_version_2_which_a_release_reading_1_refuses(patchcore_run,
                                                                                           monkeypatch):
    payload = _payload(patchcore_run[0])
    assert payload["family"] == "patchcore" and payload["family_version"] == 2
    model = load_checkpoint(patchcore_run[0]).model
    assert model_manifest(model)["family_version"] == 2   # bundle.json's model entry
    # a release whose PatchCore reads version 1 (every release before this one) refuses it by its version check
    monkeypatch.setattr(PatchcoreFamily, "version", 1)
    with pytest.raises(ConfigError, match=r"family 'patchcore' settings version 2 is newer than this fair-edge reads "
                                          r"\(1\); upgrade fair-edge"):
        ModelSpec.from_dict(payload)


def test_a_version_1_checkpoint_loads_and_scores_as_before(patchcore_run, tmp_path):
    """Version 1 as the release before this one wrote it (every setting, family_version 1) reads as the version 2
    file does; as 43b383b wrote it (no local_pad, ...) it reads as fitted then: padding excluded, the rest off."""
    payload = _payload(patchcore_run[0])
    frames = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    current = load_checkpoint(patchcore_run[0])
    before = dict(payload, family_version=1)
    torch.save(before, tmp_path / "v1.pt")
    loaded = load_checkpoint(tmp_path / "v1.pt")
    assert loaded.model == current.model
    assert torch.equal(_scores(loaded, frames), _scores(current, frames))
    settings_43b = {k: v for k, v in payload["settings"].items() if k in SETTINGS_OF_43B383B}
    torch.save(dict(before, settings=settings_43b), tmp_path / "v1_43b383b.pt")
    old = load_checkpoint(tmp_path / "v1_43b383b.pt")
    fitted = replace(current.model, settings=replace(current.settings, local_pad="excluded"))
    assert old.model == fitted
    assert torch.equal(_scores(old, frames), _scores(Checkpoint(fitted, current.state_dict), frames))
    assert not torch.equal(_scores(old, frames), _scores(current, frames))   # the padding counted scores otherwise


def test_a_version_1_bundle_loads_and_scores_as_before(patchcore_run, tmp_path, monkeypatch):
    ckpt = load_checkpoint(patchcore_run[0])
    options = BuildOptions("fp32", max_batch=4, engine=False)
    normal = make_frames(12, seed=5)
    with monkeypatch.context() as patch:   # the bundle the release before this one built: family_version 1
        patch.setattr(PatchcoreFamily, "version", 1)
        build_bundle(ckpt, tmp_path / "v1", options, normal_frames=normal)
    build_bundle(ckpt, tmp_path / "v2", options, normal_frames=normal)
    versions = [json.loads((tmp_path / name / "bundle.json").read_text())["model"]["family_version"]
                for name in ("v1", "v2")]
    assert versions == [1, 2]
    v1, v2 = load_bundle(tmp_path / "v1"), load_bundle(tmp_path / "v2")
    assert v1.model == v2.model == ckpt.model and v1.threshold == v2.threshold
    frames = make_frames(3, seed=7, defect=True)
    for backend in ("onnxruntime", "torch-cpu"):
        maps1, scores1 = select_backend(v1, backend).infer_frames(frames)
        maps2, scores2 = select_backend(v2, backend).infer_frames(frames)
        np.testing.assert_array_equal(scores1, scores2)
        np.testing.assert_array_equal(maps1, maps2)


def test_a_patchcore_setting_this_release_does_not_know_is_refused_naming_it(patchcore_run, tmp_path):
    """A newer release's setting was dropped: its model loaded and scored as if fitted without it."""
    newer = dict(PatchcoreSettings().to_dict(), score_rings=3)
    with pytest.raises(ConfigError, match=r"PatchCore setting\(s\) score_rings are unknown to this fair-edge, which "
                                          r"reads backbone, .*score_shifts: .*newer fair-edge.*Upgrade fair-edge"):
        PatchcoreSettings.from_dict(newer)
    with pytest.raises(ConfigError, match="score_rings"):
        FAMILIES["patchcore"].settings_from_dict(newer)
    payload = _payload(patchcore_run[0])
    torch.save(dict(payload, settings=dict(payload["settings"], score_rings=3)), tmp_path / "newer.pt")
    with pytest.raises(CheckpointError, match=rf"checkpoint {tmp_path / 'newer.pt'} .*setting\(s\) score_rings are "
                                              "unknown to this fair-edge"):
        load_checkpoint(tmp_path / "newer.pt")


def test_fair_and_lgfdr_settings_this_release_does_not_know_are_refused_naming_them():
    with pytest.raises(ConfigError, match=r"LGFDR setting\(s\) dropout are unknown.*which reads backbone, hidden"):
        LgfdrSettings.from_dict(dict(LgfdrSettings().to_dict(), dropout=0.1))
    fair = FairSettings().to_dict()
    with pytest.raises(ConfigError, match=r"FAIR setting\(s\) depth are unknown.*which reads width, scoring"):
        FairSettings.from_dict(dict(fair, depth=5))
    with pytest.raises(ConfigError, match=r"FAIR scoring setting\(s\) ssim are unknown.*which reads k_color, gms_c"):
        FairSettings.from_dict(dict(fair, scoring=dict(fair["scoring"], ssim=1.0)))
    assert LgfdrSettings.from_dict({"layers": 4}) == LgfdrSettings(layers=4)   # a field it lacks: the default
    assert FairSettings.from_dict(fair) == FairSettings()
