"""What the line is told about a frame's defect regions: the PLC's region registers and `rules check --json` leave
regions in ``ignore`` zones out and pair the area of the region that fired with its zone; the logs keep fine-scale
sizes apart (significant figures, not 4 decimals); an NG image writes a zone named with accents in plain letters.

Maps are fed straight to the rules (``fair_edge.station.zones``): a 400 x 400 frame at 0.05 mm/px with a 100 x 100
map (one map pixel = 4 x 4 frame pixels = 0.04 mm²), and for the fine scale a 128 x 128 frame and map at 2 um/px
(one pixel = 0.000004 mm²).
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from fair_edge.line.handshake.settings import region_values
from fair_edge.line.recorder import Recorder
from fair_edge.line.settings import RecordSettings
from fair_edge.records import Frame, RuleHit, Verdict
from fair_edge.station.rules_check import row
from fair_edge.station.zones import RegionJudge, RegionSettings

SIGNALS = ("region_count", "largest_area", "zone_id")
LEFT = [[0, 0], [200, 0], [200, 400], [0, 400]]
RIGHT = [[200, 0], [400, 0], [400, 400], [200, 400]]


def judged(amap: np.ndarray, frame: int = 400, mm_per_px: float = 0.05, **section) -> Verdict:
    """The verdict of ``amap`` ((h, w) float32, 1.0 = defect) under the ``regions:`` ``section``."""
    settings = RegionSettings.from_dict({"mm_per_px": mm_per_px, "frame": [frame, frame], **section})
    regions, hits = RegionJudge(settings, 0.5).judge((frame, frame), amap)
    return Verdict(1, 0.0, 1.0, 0.5, bool(hits), 0.01, regions=regions, hits=hits)


def plant(amap: np.ndarray, x: int, y: int, w: int, h: int) -> np.ndarray:
    amap[y : y + h, x : x + w] = 1.0
    return amap


def scratch_and_label_blobs() -> np.ndarray:
    """A 10 x 3 map-pixel scratch (1.2 mm², 2 mm long) in the left half; a 20 x 20 (16 mm²) and a 5 x 5 (1 mm²) blob
    in the right half."""
    return plant(plant(plant(np.zeros((100, 100), np.float32), 25, 25, 10, 3), 75, 75, 20, 20), 60, 10, 5, 5)


# ----------------------------------------------------------------------------- PLC registers, rules check
def test_the_plc_leaves_ignored_regions_out_and_gives_the_area_of_the_region_that_fired():
    v = judged(scratch_and_label_blobs(), zones=[{"name": "seal", "polygon": LEFT, "min_length_mm": 1.5},
                                                 {"name": "label", "polygon": RIGHT, "ignore": True}])
    assert [(r.zone, r.ignored) for r in v.regions] == [("label", True), ("seal", False), ("label", True)]
    assert region_values(v, SIGNALS) == {"region_count": 1, "largest_area": 120, "zone_id": 1}   # 1.20 mm² in seal
    assert row("img.png", v)["largest_area_mm2"] == pytest.approx(1.2)
    # verdicts.jsonl / MQTT mark the regions the line does not count
    assert [r.get("ignored", False) for r in v.to_json_dict()["regions"]] == [True, False, True]


def test_the_area_goes_with_the_zone_of_the_first_rule_not_the_largest_region():
    """Both zones count; a rule fires on the small scratch in seal only: its area, not the 16 mm² blob's."""
    v = judged(scratch_and_label_blobs(), zones=[{"name": "seal", "polygon": LEFT, "min_length_mm": 1.5},
                                                 {"name": "body", "polygon": RIGHT}])
    assert region_values(v, SIGNALS) == {"region_count": 3, "largest_area": 120, "zone_id": 1}
    assert row("img.png", v)["largest_area_mm2"] == pytest.approx(1.2)


def test_without_a_hit_the_largest_counted_region_and_its_zone_are_given():
    v = judged(scratch_and_label_blobs(), default={"ignore": True},
               zones=[{"name": "seal", "polygon": LEFT}, {"name": "label", "polygon": [[300, 0], [400, 0], [400, 400],
                                                                                        [300, 400]], "ignore": True}])
    assert [r.zone for r in v.regions] == ["label", "seal", "default"] and v.hits == ()
    assert region_values(v, SIGNALS) == {"region_count": 1, "largest_area": 120, "zone_id": 1}
    only_ignored = judged(plant(np.zeros((100, 100), np.float32), 75, 75, 20, 20),
                          zones=[{"name": "label", "polygon": RIGHT, "ignore": True}])
    assert region_values(only_ignored, SIGNALS) == {"region_count": 0, "largest_area": 0, "zone_id": 0}
    assert row("img.png", only_ignored)["largest_area_mm2"] is None


def test_a_max_count_hit_gives_the_largest_counted_region_of_its_zone():
    amap = scratch_and_label_blobs()
    v = judged(amap, zones=[{"name": "seal", "polygon": LEFT, "max_count": 0},
                            {"name": "label", "polygon": RIGHT, "ignore": True}])
    assert [(h.rule, h.region) for h in v.hits] == [("max_count", None)]
    assert region_values(v, SIGNALS) == {"region_count": 1, "largest_area": 120, "zone_id": 1}


# ----------------------------------------------------------------------------- sizes in the logs
def fine_verdict(width_px: int) -> dict:
    """The logged row of a ``width_px`` x 5 px region at 2 um/px under min_area_mm2 0.0001 (25 px²)."""
    amap = plant(np.zeros((128, 128), np.float32), 20, 20, width_px, 5)
    return judged(amap, frame=128, mm_per_px=0.002, default={"min_area_mm2": 0.0001}).to_json_dict()


def test_fine_scale_sizes_keep_their_order_and_their_comparison_with_the_limit():
    ok, ng = fine_verdict(4), fine_verdict(7)    # 20 px² = 0.00008 mm², passed; 35 px² = 0.00014 mm², rejected
    assert ok["regions"][0]["area_mm2"] == 0.00008 and "hits" not in ok
    assert ng["regions"][0]["area_mm2"] == 0.00014 and ng["regions"][0]["length_mm"] == 0.014
    (hit,) = ng["hits"]
    assert (hit["value"], hit["limit"]) == (0.00014, 0.0001)
    assert json.loads(json.dumps(ng))["hits"][0]["value"] > hit["limit"]


@pytest.mark.parametrize("value, logged", [
    (2.0, 2.0), (12.345678, 12.3457), (2024.123456, 2024.1235), (0.123456, 0.1235),   # as 4 decimals wrote them
    (0.0123456, 0.01235), (8.000000000000001e-05, 0.00008), (1.4e-4, 0.00014), (0.0, 0.0), (4.0, 4.0),
])
def test_logged_sizes_are_4_decimals_or_4_significant_figures_where_that_keeps_more(value, logged):
    from fair_edge.regions import logged_size

    assert logged_size(value) == logged


# ----------------------------------------------------------------------------- NG image text
def overlay_of(tmp_path, zone: str) -> np.ndarray:
    """The NG overlay of a part that a rule in zone ``zone`` rejected."""
    hit = RuleHit("min_area_mm2", zone, 1, 0.7, 0.5, "mm²")
    with Recorder(RecordSettings(dir=tmp_path, min_free_mb=0), run_id="R") as rec:
        rec.record(Frame(3, 1.0, np.full((120, 400, 3), 80, np.uint8), "cam"),
                   Verdict(3, 1.0, 0.4, 0.5, True, 1.01, "cam", hits=(hit,)), np.zeros((30, 100), np.float32))
        assert rec.flush()
    assert json.loads((tmp_path / "verdicts.jsonl").read_text())["hits"][0]["zone"] == zone   # the log keeps it
    return cv2.imread(str(tmp_path / "ng" / "R_00000003_overlay.png"))


def test_a_zone_named_with_accents_is_written_in_plain_letters_on_the_ng_image(tmp_path):
    """The image font is ASCII only: Dichtfläche was drawn as Dichtfl\\xe4che."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert np.array_equal(overlay_of(tmp_path / "a", "Dichtfläche"), overlay_of(tmp_path / "b", "Dichtflache"))


def test_the_image_text_keeps_ascii_and_marks_what_has_no_plain_letter():
    from fair_edge.line.ng_images import _ascii

    reason = "region 0.7 mm² in zone Dichtfläche ≥ 0.5 mm²"
    assert _ascii(reason) == "region 0.7 mm2 in zone Dichtflache >= 0.5 mm2"
    assert _ascii("Stoßkante Ébène 東") == "Sto?kante Ebene ?"
