"""Review items of the JPEG-check session: a CLI build checks its held-out frames' map sizes once (in
``build_bundle``), naming the --calib folder when its images stand in as the threshold's, before it says
"building"."""

from __future__ import annotations

import pytest

from fair_edge.export import build as export_build
from test_handoff_build_bench import invoke_build, make_frames, one_line, tiled_ckpt, write_pngs  # noqa: F401 - fixture


def test_a_cli_build_checks_the_held_out_grid_once_naming_the_calib_folder(tiled_ckpt, tmp_path, monkeypatch):
    calib = write_pngs(tmp_path / "calib", make_frames(3, seed=3, size=96) + make_frames(2, seed=4, size=136))
    checked = []
    real_check = export_build.check_held_out_grid

    def counted(*args):
        checked.append(args[1][0])
        return real_check(*args)

    monkeypatch.setattr(export_build, "check_held_out_grid", counted)
    r = invoke_build(tiled_ckpt, "--calib", calib, "--out", tmp_path / "b", "--no-engine")
    text = one_line(r.output)
    assert r.exit_code == 2, r.output
    assert checked == [f"--calib {calib} (the threshold's images without --normal)"]
    assert f"136 x 136 px frames (2 of --calib {calib} (the threshold's images without --normal))" in text
    assert "building" not in text and not (tmp_path / "b").exists()
