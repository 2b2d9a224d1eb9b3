"""fair_edge.plots: PNG files of the requested size, and a deterministic, in-range heat-map overlay."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fair_edge import plots
from fair_edge.training import metrics
from fair_edge.errors import ConfigError, DataError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_png(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None
    return image


@pytest.fixture
def curves():
    rng = np.random.default_rng(0)
    maps = rng.random((4, 32, 32), dtype=np.float32)
    masks = np.zeros(maps.shape, bool)
    masks[:2, 8:20, 4:16] = True
    maps[masks] += 0.4
    return maps, masks


def test_roc_and_pro_plots_are_pngs_of_the_requested_size(tmp_path, curves):
    maps, masks = curves
    fpr, tpr, _ = metrics.roc_curve(maps, masks)
    roc = plots.save_roc_plot(tmp_path / "roc.png", fpr, tpr, metrics.pixel_auroc(maps, masks), size=(500, 400))
    fpr, pro, _ = metrics.pro_curve(maps, masks)
    pro_path = plots.save_pro_plot(tmp_path / "sub" / "pro.png", fpr, pro, metrics.aupro(maps, masks))
    assert read_png(roc).shape == (400, 500, 3)
    image = read_png(pro_path)
    assert image.shape == (480, 640, 3)
    assert (image < 250).any(axis=2).mean() > 0.01  # something was drawn, not a blank page


def test_vline_and_curve_drawn_where_expected(tmp_path):
    x = np.array([0.0, 1.0])
    path = plots.save_line_plot(tmp_path / "p.png", [(x, np.array([0.5, 0.5]), "flat")], "t", "x", "y", vline=0.3)
    image = read_png(path).astype(int)
    left, right, top, bottom = plots._MARGINS
    box_w, box_h = 640 - left - right, 480 - top - bottom
    row = top + box_h // 2  # y = 0.5: the curve (coloured, not grey)
    assert (np.ptp(image[row, left + 20 : left + box_w - 20], axis=1) > 60).mean() > 0.9
    column = image[top + 5 : top + box_h - 5, left + round(0.3 * box_w)]
    dark = (column.max(axis=1) < 220) & (np.ptp(column, axis=1) < 20)  # grey dashes
    assert 0.2 < dark.mean() < 0.8


def test_line_plot_rejects_bad_input(tmp_path):
    x = np.linspace(0, 1, 5)
    with pytest.raises(DataError, match="same length"):
        plots.save_line_plot(tmp_path / "a.png", [(x, x[:3], "")], "t", "x", "y")
    with pytest.raises(DataError, match="finite"):
        plots.save_line_plot(tmp_path / "a.png", [(x, x * np.nan, "")], "t", "x", "y")
    with pytest.raises(ConfigError, match="xlim"):
        plots.save_line_plot(tmp_path / "a.png", [(x, x, "")], "t", "x", "y", xlim=(1, 0))
    with pytest.raises(ConfigError, match=".png"):
        plots.save_line_plot(tmp_path / "a.jpg", [(x, x, "")], "t", "x", "y")


def test_overlay_is_deterministic_in_range_and_hot_corner_is_red():
    image = np.full((120, 160, 3), 128, np.uint8)
    anomaly_map = np.zeros((30, 40), np.float32)
    anomaly_map[:10, :10] = 1.0  # hot top-left corner
    first = plots.heatmap_overlay(image, anomaly_map, vmin=0.0, vmax=1.0)
    second = plots.heatmap_overlay(image.copy(), anomaly_map.copy(), vmin=0.0, vmax=1.0)
    assert first.shape == (120, 160, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, second)
    b, g, r = (first[:20, :20, c].astype(int) for c in range(3))
    assert (r > b + 40).all() and (r > g + 40).all()  # red-dominant corner
    b, g, r = (first[80:, 100:, c].astype(int) for c in range(3))
    assert (b > r + 40).all()  # the cold rest is blue-dominant
    above, top = (plots.heatmap_overlay(image, np.full((30, 40), v, np.float32), 0.0, 1.0) for v in (5.0, 1.0))
    np.testing.assert_array_equal(above, top)  # values above vmax are clipped to vmax


def test_overlay_rejects_bad_input():
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(DataError, match="uint8"):
        plots.heatmap_overlay(image.astype(np.float32), np.zeros((4, 4), np.float32), 0, 1)
    with pytest.raises(DataError, match=r"map\[0\]"):
        plots.heatmap_overlay(image, np.zeros((1, 4, 4), np.float32), 0, 1)
    with pytest.raises(ConfigError, match="vmin < vmax"):
        plots.heatmap_overlay(image, np.zeros((4, 4), np.float32), 1, 1)
    with pytest.raises(DataError, match="inf"):
        plots.heatmap_overlay(image, np.full((4, 4), np.inf, np.float32), 0, 1)
    with pytest.raises(DataError, match="NaN everywhere"):
        plots.heatmap_overlay(image, np.full((4, 4), np.nan, np.float32), 0, 1)


def test_overlay_leaves_the_image_as_it_is_where_the_map_has_no_score():
    """NaN = no score (a model tiled over part of the frame): those pixels keep the image; the rest is blended."""
    image = np.full((40, 40, 3), 128, np.uint8)
    anomaly_map = np.full((40, 40), 1.0, np.float32)
    anomaly_map[:, 20:] = np.nan
    out = plots.heatmap_overlay(image, anomaly_map, 0.0, 1.0)
    np.testing.assert_array_equal(out[:, 21:], image[:, 21:])
    b, r = out[:, :19, 0].astype(int), out[:, :19, 2].astype(int)
    assert (r > b + 40).all()                                # the scored half: hot, red over the grey image



def test_text_with_a_file_name_that_is_not_utf8_is_drawn_escaped(tmp_path):
    """A Latin-1 file name (from a Windows share) holds surrogates in Python: OpenCV's getTextSize / putText
    crashed the process on them (segfault, exit 139). Drawn in a child process, so a crash fails this test only."""
    import subprocess
    import sys

    script = (
        "import sys, numpy as np\n"
        "from fair_edge import plots\n"
        "name = 'd\\udce9g\\udce2t.png \\u2265 1 mm\\u00b2'\n"
        "strip = plots.text_strip(300, ['source ' + name])\n"
        "x = np.linspace(0, 1, 5)\n"
        "plots.save_line_plot(sys.argv[1], [(x, x, name)], name, name, name)\n"
        "print(plots.drawable_text(name))\n"
    )
    out = tmp_path / "plot.png"
    child = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, (child.returncode, child.stderr[-2000:])
    assert child.stdout.strip() == r"d\udce9g\udce2t.png \u2265 1 mm\xb2"
    assert read_png(out).shape == (480, 640, 3)
