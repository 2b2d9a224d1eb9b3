"""``fair-edge fuse`` prints each member's statistics as what they are: the mean and spread of its map maximum on
the held-out normals ("normal map max"), which the fusion rule normalises its map by. It printed them as "normal
score", which they are not for a family whose score is not its map maximum (PatchCore reweights it: the audit's
member printed 5.8168 +- 0.296 while its own score on the same images was 5.7045 +- 0.312)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from export_fixtures import MODEL, PRE, make_frames, write_pngs
from typer.testing import CliRunner

from fair_edge.cli import app
from fair_edge.export.build import BuildOptions, build_bundle
from fair_edge.models.checkpoint import Checkpoint
from fair_edge.runtime.selection import select_backend
from fair_edge.tiling import TilingConfig


def test_fuse_prints_each_members_normal_map_max(tiny_detector, tmp_path):
    normals = make_frames(8, seed=5, size=64)
    state = tiny_detector.unet.state_dict()
    members = []
    for name, pre in (("whole", PRE), ("tiled", replace(PRE, tiling=TilingConfig(32, 8)))):
        ckpt = Checkpoint(replace(MODEL, preprocess=pre), state)
        members.append(build_bundle(ckpt, tmp_path / name, BuildOptions(engine=False), normal_frames=normals).bundle)
    folder = write_pngs(tmp_path / "normals", normals)
    result = CliRunner().invoke(app, ["fuse", *(str(m.root) for m in members), "--normal", str(folder),
                                      "--out", str(tmp_path / "fused")])
    assert result.exit_code == 0, result.output
    assert "normal score" not in result.output
    for i, member in enumerate(members):
        scorer = select_backend(member, "onnxruntime")   # fuse's default --backend
        try:
            maps, _ = scorer.infer_frames(normals)
        finally:
            scorer.backend.close()
        maxima = np.asarray(maps).reshape(len(normals), -1).max(axis=1).astype(np.float64)
        line = next(line for line in result.output.splitlines() if line.startswith(f"  m{i}: "))
        assert line.startswith(f"  m{i}: {member.root}: ")   # the bundle given, not its copy's folder (m0: m0: ...)
        printed = line.split("; normal map max ")[1].split(" +- ")
        # printed to 5 and 3 significant digits
        assert float(printed[0]) == pytest.approx(maxima.mean(), rel=1e-4)
        assert float(printed[1]) == pytest.approx(maxima.std(), rel=2e-3)
