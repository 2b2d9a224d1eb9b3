"""--resume of a run an older fair-edge saved: without its list of training images (``data_files``) and with DATA as
typed, relative to the folder its training started in. Resumed from another folder that holds its own data/ref, it
trained on those images with only a generic warning; now what the checkpoint's summary recorded (image count,
dataset name) is compared with the data loaded, a difference is refused naming the saved path, the folder it is read
from now, both counts and the fix, and the warning of a resume that goes on names the path and the folder."""

from __future__ import annotations

import logging
import shutil
from contextlib import contextmanager

import pytest
import torch
from typer.testing import CliRunner

from fair_edge.cli import app
from fair_edge.errors import ConfigError
from fair_edge.training.resume import check_same_data

FAMILY_FLAGS = {"fair": ["--model", "fair", "--width", "32", "--steps", "2", "--save-every", "1"],
                "lgfdr": ["--model", "lgfdr", "--steps", "2", "--save-every", "1"],
                "patchcore": ["--model", "patchcore", "--set", "embed_dim=16"]}
OLD_STATE = {"data": "data/plate", "category": None, "textures": None, "backbone_weights": None,
             "backbone_sha256": None}  # the run as fair-edge 5c66ebf saved it: DATA as typed


def _images(mvtec_dir, folder, count: int):
    """``folder`` holding the first ``count`` of the fixture's 16 normal training images."""
    folder.mkdir(parents=True)
    for path in sorted((mvtec_dir / "train" / "good").glob("*.png"))[:count]:
        shutil.copy(path, folder / path.name)
    return folder


def _as_an_older_release_saved_it(path) -> None:
    """Rewrite ``path`` (a last.pt) as a release before ``data_files`` wrote it: DATA as typed, no image list and no
    step budget in its train_state; its data_summary (name, train_images_used) as it was."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    state = payload["train_state"]
    state["run"] = dict(OLD_STATE)
    for key in ("data_files", "total_steps"):
        state.pop(key, None)
    torch.save(payload, path)


@contextmanager
def _resume_warnings():
    """The records ``fair_edge.training.resume`` logs meanwhile, on a handler of its own logger: the CLI's
    ``logging.basicConfig(force=True)`` replaces the root's handlers, caplog's among them."""
    class Records(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.WARNING)
            self.records: list[logging.LogRecord] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.records.append(record)

    handler, logger = Records(), logging.getLogger("fair_edge.training.resume")
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)


@pytest.mark.parametrize("family", sorted(FAMILY_FLAGS))
def test_a_relative_data_path_read_from_another_folder_with_other_images_is_refused(mvtec_dir, tmp_path, monkeypatch,
                                                                                   family):
    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    _images(mvtec_dir, start / "data" / "plate", 16)
    _images(mvtec_dir, elsewhere / "data" / "plate", 6)   # another copy of data/plate, with 6 of the images
    run = start / "run"
    monkeypatch.chdir(start)
    runner = CliRunner()
    args = ["train", "data/plate", "--image-size", "32", "--batch", "4", "--device", "cpu", "--out", str(run)]
    result = runner.invoke(app, [*args, *FAMILY_FLAGS[family]])
    assert result.exit_code == 0, result.output
    _as_an_older_release_saved_it(run / "last.pt")

    monkeypatch.chdir(elsewhere)
    result = runner.invoke(app, ["train", "--resume", "--out", str(run)], env={"COLUMNS": "400"})
    text = " ".join(result.output.split())
    assert result.exit_code == 2, text
    assert f"cannot resume {run / 'last.pt'}" in text and "image count: 16 then, 6 now" in text, text
    assert (f"its DATA was saved as typed, 'data/plate', a path relative to the folder its training started in, and "
            f"is read now from {elsewhere} (that is {elsewhere / 'data' / 'plate'})") in text, text
    assert ("Run the resume from the folder its training started in, or give DATA again as it is from here" in text
            and f"fair-edge train PATH --resume --out {run}" in text), text

    # from the folder its training started in: the same count and name, so it resumes, and the warning says where from
    monkeypatch.chdir(start)
    with _resume_warnings() as records:
        result = runner.invoke(app, ["train", "--resume", "--out", str(run)])
    assert result.exit_code == 0, result.output
    warning = " ".join(" ".join(r.getMessage() for r in records).split())
    assert "did not record its training images (only their image count 16 and dataset name 'plate'" in warning, warning
    assert (f"Its DATA was saved as typed, 'data/plate', a path relative to the folder its training started in, and "
            f"is read from the current folder, {start}, unless given again") in warning, warning

    _as_an_older_release_saved_it(run / "last.pt")   # and from elsewhere with DATA given again, as the refusal says
    monkeypatch.chdir(elsewhere)
    result = runner.invoke(app, ["train", "../start/data/plate", "--resume", "--out", str(run)])
    assert result.exit_code == 0, result.output


def test_an_old_runs_recorded_summary_is_compared_with_the_data_loaded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "run" / "last.pt"
    state = {"run": dict(OLD_STATE, data="data/ref"), "step": 3}
    recorded = {"name": "ref", "train_images": 30, "train_images_used": 30}
    with pytest.raises(ConfigError, match=rf"image count: 30 then, 10 now\); its DATA was saved as typed, 'data/ref', "
                                          rf".* is read now from {tmp_path} "):
        check_same_data(path, state, [], 0, recorded, {"name": "ref", "train_images_used": 10})
    with pytest.raises(ConfigError, match=r"dataset name: 'ref' then, 'plate' now"):
        check_same_data(path, state, [], 0, recorded, {"name": "plate", "train_images_used": 30})
    absolute = {**state, "run": dict(OLD_STATE, data=str(tmp_path / "ref"))}
    with pytest.raises(ConfigError, match=rf"its DATA was saved as '{tmp_path / 'ref'}'\. .*Restore the images"):
        check_same_data(path, absolute, [], 0, recorded, {"name": "ref", "train_images_used": 10})
    with _resume_warnings() as records:
        check_same_data(path, state, [], 0, recorded, {"name": "ref", "train_images_used": 30})
        check_same_data(path, absolute, [], 0)   # a caller without the summaries: the warning alone
    warnings = [" ".join(r.getMessage().split()) for r in records]
    assert f"'data/ref', a path relative to the folder its training started in, and is read from the current " \
           f"folder, {tmp_path}" in warnings[0], warnings
    assert "only their" not in warnings[1] and "relative" not in warnings[1], warnings
