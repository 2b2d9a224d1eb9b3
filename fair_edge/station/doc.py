"""The station file's reference, generated from the settings dataclasses so it cannot drift from them.

``station_reference()`` is a complete station YAML with every field at its default (what
``StationConfig()`` holds) and the allowed values of the choice fields as comments. It is shown by
``fair-edge run --help`` and printed in the README (a test keeps the two identical and loads it
back into ``StationConfig()``).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from fair_edge.cameras.base import CaptureSettings
from fair_edge.cameras.registry import read_wait_ranges, timeout_defaults
from fair_edge.line.handshake import HANDSHAKE_SCHEMES
from fair_edge.line.settings import FAIL_SAFE_POLICIES, IMAGE_FORMATS
from fair_edge.line.sinks import SINK_SCHEMES
from fair_edge.runtime.selection import BACKEND_NAMES
from fair_edge.station.config import FULL_POLICIES, StationConfig
from fair_edge.station.views import GROUP_BY, MATCH_MODES

# section -> comment naming the allowed values (constants imported, not written again)
SECTION_NOTES = {
    "camera": f"source: index, /dev/videoN, RTSP URL, video file, image folder, gst:, csi:, genicam:, aravis:; "
              f"full_policy: {' | '.join(FULL_POLICIES)}; flip: csi: only, nvvidconv flip-method 0-7 (1, 3, 5, 7 "
              "turn the image: frames height x width); timeout_s: aravis: and genicam: only, how long a read waits "
              "for a frame (a triggered camera, TriggerMode On: for a part), seconds, "
              f"{read_wait_ranges()}, null = the source's ({timeout_defaults()}); a wait under a free-running "
              f"camera's frame period is a missed frame ({CaptureSettings.misses_before_reconnect} in a row "
              "reconnect), on genicam: one timeout is a reconnect; a free-running camera slower than one frame per "
              "its longest wait needs a higher frame rate (aravis: fps:) or a trigger",
    "bundle": "folder written by `fair-edge build`",
    "backend": " | ".join(BACKEND_NAMES),
    "decision": "threshold null = the bundle's calibrated one (with an roi: calibrated at start on the bundle's normal "
                "maps x roi); roi: mask image (white = inspected), null = all",
    "output": "summary.json, reviews.jsonl, audit.jsonl; verdicts.jsonl, gate.jsonl and NG images (ng/) there too "
              "unless record.dir names another folder",
    "reject": f"sinks: URLs {', '.join(s + '://...' for s in SINK_SCHEMES)}; fail_safe: {' | '.join(FAIL_SAFE_POLICIES)}; "
              f"handshake.url: null (off), {', '.join(s + '://...' for s in HANDSHAKE_SCHEMES)} (the PLC handshake; "
              "modbus: holding registers, opcua: node ids); docs/line-integration.md",
    "record": f"image_format: {' | '.join(IMAGE_FORMATS)}",
    "metrics": "Prometheus endpoint; host 127.0.0.1 = this machine only",
    "mqtt": "url: mqtt://HOST:PORT/PREFIX (verdicts, faults, summary), null = off",
    "console": "the operator console (fair_edge/console/settings.py); host 127.0.0.1 = this machine only",
    "regions": "defect regions; pixel_threshold null = the bundle's; mm_per_px or scale: {points: [[x, y], [x, y]], mm: D}; "
               "frame: [width, height]; default: rules outside every zone; zones: [{name, polygon or mask, "
               "min_area_mm2, min_length_mm, min_area_px, min_length_px, max_count, ignore}]; fair_edge/station/zones.py",
    "cameras": "several cameras instead of camera: [{name, source, fps, loop, queue_size, full_policy, flip, timeout_s, "
               "bundle, roi, threshold, regions, reject, offset_counts}]; bundle / roi / threshold / regions null = the "
               "station's; "
               "regions: its keys over the station's regions: (zones of another frame: its own); reject: the "
               "camera's own outputs (by: lane); fair_edge/station/views.py",
    "group": f"with cameras: by: {' | '.join(GROUP_BY)} (the views of one part, or one line per camera); match: "
             f"{' | '.join(MATCH_MODES)} (handshake: the PLC's part id, with reject.handshake); rule: any | "
             "count>=K (NG views for an NG part); part_timeout_ms null = the part's due time (match: encoder: the belt at its gate count, without encoder_distance 1 s after the furthest camera; with the PLC handshake half of its result_timeout_ms, at most 1 s; with neither, 1 s)",
}


def _yaml_value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    return f'"{text}"' if text == "" or text[0].isdigit() or ":" in text or text in ("null", "true", "false") else text


def _flow(mapping: dict, indent: str = "") -> str:
    """A YAML flow mapping; a nested mapping starts a continuation line, indented one step more."""
    items = [f"{k}: {_yaml_value(v)}" for k, v in mapping.items() if not isinstance(v, dict)]
    text = "{" + ", ".join(items)
    for k, v in mapping.items():
        if isinstance(v, dict):
            text += f",\n{indent}  {k}: {_flow(v, indent + '  ')}"
    return text + "}"


def station_sections(cfg: StationConfig = StationConfig()) -> dict[str, object]:
    """The station file's sections as YAML would hold them (``decision`` gathers threshold and roi)."""
    plain = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    record = {k: (str(v) if isinstance(v, Path) else v) for k, v in plain["record"].items()}
    return {
        "camera": plain["camera"], "bundle": plain["bundle"], "backend": plain["backend"],
        "batching": plain["batching"], "decision": {"threshold": plain["threshold"], "roi": plain["roi"]},
        "output": plain["output"], "reject": plain["reject"], "record": record, "metrics": plain["metrics"],
        "mqtt": plain["mqtt"], "console": plain["console"],
        "regions": {k: plain["regions"][k] for k in ("enabled", "pixel_threshold", "mm_per_px", "frame", "max_regions")},
        "cameras": None, "group": plain["group"],
    }


def station_reference() -> str:
    """Every station-file field at its default, one section per line, with the allowed values."""
    lines = []
    for name, value in station_sections().items():
        text = _flow(value) if isinstance(value, dict) else _yaml_value(value)
        note = SECTION_NOTES.get(name)
        lines.append(f"{name}: {text}" + (f"\n  # {note}" if note else ""))
    return "\n".join(lines)
