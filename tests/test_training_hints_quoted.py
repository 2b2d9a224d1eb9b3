"""The commands training messages suggest can be pasted into a shell as printed: a category, run folder or bundle
folder whose name holds a space is quoted (``shlex.quote`` / ``fair_edge.shell.shell_word``). Before, `--category my
plate` or `--out runs/my run` was printed bare and the pasted command read two words."""

from __future__ import annotations

import shlex

import cv2
import numpy as np
import pytest

from fair_edge.errors import CheckpointError, ConfigError, DataError
from fair_edge.models.checkpoint import load_checkpoint
from fair_edge.training.data import load_dataset
from fair_edge.training.resume import RunSource, check_same_summary, resume_source


def test_an_mvtec_root_suggests_a_category_with_a_space_quoted(tmp_path):
    for category in ("my plate", "other"):
        (tmp_path / category / "train" / "good").mkdir(parents=True)
        cv2.imwrite(str(tmp_path / category / "train" / "good" / "000.png"), np.full((8, 8, 3), 100, np.uint8))
    with pytest.raises(DataError, match=r"\(e\.g\. --category 'my plate'\)"):
        load_dataset(tmp_path)


def test_a_resume_refusal_quotes_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)   # data/plate, saved relative, is not found from here
    out = tmp_path / "my run"
    with pytest.raises(ConfigError) as refused:
        resume_source(RunSource(data="data/plate"), {}, out)
    assert str(refused.value).endswith(f"fair-edge train PATH --resume --out {shlex.quote(str(out))}")
    state = {"run": {"data": "data/plate"}}
    with pytest.raises(ConfigError) as refused:
        check_same_summary(out / "last.pt", state, {"name": "plate"}, {"name": "other"})
    assert f"fair-edge train PATH --resume --out {shlex.quote(str(out))}" in str(refused.value)


def test_a_bundle_given_as_a_checkpoint_suggests_running_it_quoted(tmp_path):
    bundle = tmp_path / "my bundle"
    bundle.mkdir()
    (bundle / "bundle.json").write_text("{}")
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(bundle)
    word = shlex.quote(str(bundle))
    assert f"`fair-edge run --bundle {word}` or `fair-edge bench {word}`" in str(refused.value)
