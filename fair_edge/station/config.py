"""The station file: one YAML that says what a station inspects and how it is wired.

    camera:   {source: "0", fps: null, loop: false, queue_size: 4, full_policy: auto}
    bundle:   runs/bundle-w32            # from `fair-edge build`
    backend:  auto                       # auto | tensorrt | torch-cuda | torch-cpu | onnxruntime | openvino
    batching: {max_batch: 1, max_wait_ms: 2.0}
    decision: {threshold: null, roi: null}   # null threshold = the bundle's; roi = mask image path
    output:   runs/station               # verdicts.jsonl, NG images, summary.json
    reject:   {...}                      # see docs/line-integration.md
    record:   {...}
    metrics:  {enabled: false, host: 127.0.0.1, port: 9108}
    mqtt:     {url: null}                # e.g. mqtt://127.0.0.1:1883/line3: verdicts, faults, summary
    console:  {enabled: true, host: 127.0.0.1, port: 8765, token: null, ...}   # fair_edge/console/settings.py
    regions:  {enabled: true, pixel_threshold: null, mm_per_px: null, frame: null, default: {}, zones: []}
              # defect regions, camera scale, zones and their rules: fair_edge/station/zones.py
    cameras:  [{name: top, source: "0"}, {name: left, source: "1"}]   # instead of camera: several
              # each may set its own bundle, roi, threshold and regions: (its keys over the station's regions:)
    group:    {by: part, match: window, window_ms: 30, rule: any}      # views of one part: station/views.py

Every field is checked on load; an error names the field, the expected form and the value found.
A path field that starts with ``~`` (``output: ~/station_out``) is read as in a shell: under the home folder
(``home_expanded``). Command-line flags override the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from fair_edge.cameras.capture import FULL_POLICIES as CAPTURE_POLICIES
from fair_edge.cameras.registry import station_options
from fair_edge.console.settings import ConsoleSettings
from fair_edge.errors import ConfigError
from fair_edge.shell import shell_word
from fair_edge.station.inspector import MAX_BATCH, LoopSettings
from fair_edge import fields as f
from fair_edge.station.views import GroupSettings, ViewSettings, parse_views
from fair_edge.station.zones import RegionSettings
from fair_edge.line.settings import (MetricsSettings, MqttSettings, RecordSettings, RejectSettings, check_gpio_outputs,
                                     check_sink_urls)
from fair_edge.line.shared_outputs import warn_shared_outputs
from fair_edge.runtime.selection import BACKEND_NAMES

AUTO_POLICY = "auto"  # block for a replay without fps, drop_oldest for everything else
FULL_POLICIES = (AUTO_POLICY, *CAPTURE_POLICIES)


def check_fps(where: str, fps: Any) -> float | None:
    """A camera's ``fps`` (``where`` = ``camera`` or ``cameras[i]``): None (a folder or video read as fast as
    inspection takes it, every frame inspected) or a rate > 0 frames/s. 0 is refused: a replay source reads
    it as "as fast as possible", so it would pass for a timed line (reject pulses placed on a clock the
    frames do not keep) and drop frames."""
    if fps is None:
        return None
    value = f.number(where, "fps", fps)
    if value <= 0:
        raise ConfigError(f"{where}.fps: expected a rate in frames/s > 0, or null, found {fps!r}; leave fps out "
                          "(null, no --fps) to replay a folder or video unpaced (every frame inspected, no reject "
                          "pulses), or give the line's rate (e.g. fps: 10 / --fps 10) to replay it as a camera.")
    return value


@dataclass(frozen=True)
class CameraSettings:
    """source: a camera spec (index, /dev/videoN, RTSP URL, video file, image folder, gst/csi/genicam:...).
    fps: replay rate for folders and videos, frames/s > 0 (0 is refused: ``check_fps``); None = read them as fast
    as inspection takes them.
    loop: replay forever. queue_size / full_policy: the capture queue and what a full queue does:
    ``auto`` = ``block`` for a folder or video replayed without fps (back-pressure: every frame is
    inspected), else ``drop_oldest`` (a camera, or a replay at a set rate, acts as a live line).
    flip: a ``csi:`` camera's ``nvvidconv flip-method`` (0-7, 0 = none); 1, 3, 5 and 7 turn the image 90 degrees
    or transpose it, so its frames come height x width (``cameras.gstreamer.FLIP_METHODS``). timeout_s: how long
    one read of an ``aravis:`` or ``genicam:`` camera waits for a frame, seconds (a triggered camera, ``TriggerMode``
    On: for a part, before it checks the link and reads again); None = the source's own
    (``cameras.registry.timeout_defaults``); from ``cameras.registry.READ_WAIT_MIN_S`` to its kind's
    ``READ_WAIT_MAX_S``."""

    source: str = "0"
    fps: float | None = None
    loop: bool = False
    queue_size: int = 4
    full_policy: str = AUTO_POLICY
    flip: int = 0
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        check_fps("camera", self.fps)   # also for settings made by flags (--fps 0), not read from a file
        self.source_options()   # also for a source given by flags (--source DIR with the file's flip: refused)

    def source_options(self) -> dict[str, Any]:
        """The options this camera gives its source besides fps and loop (``cameras.registry.station_options``:
        checked; {} at their defaults)."""
        return station_options("camera", self.source, self.flip, self.timeout_s)

    @classmethod
    def from_dict(cls, data: Any) -> "CameraSettings":
        s = "camera"
        d = f.with_defaults(s, data, cls)
        return cls(
            source=str(d["source"]),
            fps=check_fps(s, d["fps"]),
            loop=f.boolean(s, "loop", d["loop"]),
            queue_size=f.integer(s, "queue_size", d["queue_size"], minimum=1),
            full_policy=f.choice(s, "full_policy", d["full_policy"], FULL_POLICIES),
            flip=d["flip"], timeout_s=d["timeout_s"],   # checked by __post_init__ (station_options)
        )


def record_section(data: Any) -> Mapping[str, Any]:
    """The station file's ``record:`` section as a mapping ({} when left out or null), refused when it is anything
    else: ``record: false`` ("no recording") loaded as the defaults, NG images still saved, and ``record: yes`` or a
    list crashed the load with a TypeError."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"record: expected a mapping of settings, found {data!r}; write the settings under it, "
                          "e.g. record: {save_ng_images: false} to keep the verdict log without NG images, or leave "
                          "record: out for the defaults")
    return data


def expand_home(value: Any) -> Any:
    """A path text starting with ``~`` or ``~user`` with that home folder put in (``os.path.expanduser``; left as
    given when there is no home folder); any other value as given (a camera index, a URL, a value the field's own
    check refuses)."""
    return os.path.expanduser(value) if isinstance(value, str) and value.startswith("~") else value


def _with_home(data: Any, keys: tuple[str, ...]) -> Any:
    """A copy of the mapping ``data`` with ``expand_home`` applied to ``keys``; ``data`` itself when it is not a
    mapping (its section's check refuses it, naming it)."""
    if not isinstance(data, Mapping):
        return data
    return {**data, **{key: expand_home(data[key]) for key in keys if key in data}}


def _regions_with_home(regions: Any) -> Any:
    """A ``regions:`` mapping with ``expand_home`` applied to each zone's mask; ``regions`` itself when it holds no
    list of zones (its check refuses what is malformed, naming it)."""
    if isinstance(regions, Mapping) and isinstance(regions.get("zones"), list):
        return {**regions, "zones": [_with_home(zone, ("mask",)) for zone in regions["zones"]]}
    return regions


def _camera_with_home(view: Any) -> Any:
    """One ``cameras:`` item with ``~`` expanded in source, bundle, roi and its regions' zone masks."""
    out = _with_home(view, ("source", "bundle", "roi"))
    if isinstance(out, Mapping) and "regions" in out:
        out = {**out, "regions": _regions_with_home(out["regions"])}
    return out


def home_expanded(d: Mapping[str, Any]) -> dict[str, Any]:
    """The station file's top-level mapping with ``~`` expanded in every path field, before any is read: bundle,
    output, decision.roi, record.dir, camera.source (a folder or video), cameras[i].source / bundle / roi /
    regions.zones[j].mask and regions.zones[i].mask. Without it ``output: ~/station_out`` wrote into a folder named
    ``~`` in the current one."""
    out = _with_home(d, ("bundle", "output"))
    for section, keys in (("decision", ("roi",)), ("record", ("dir",)), ("camera", ("source",))):
        if section in out:
            out[section] = _with_home(out[section], keys)
    if isinstance(out.get("cameras"), list):
        out["cameras"] = [_camera_with_home(view) for view in out["cameras"]]
    if "regions" in out:
        out["regions"] = _regions_with_home(out["regions"])
    return out


@dataclass(frozen=True)
class StationConfig:
    camera: CameraSettings = field(default_factory=CameraSettings)
    bundle: Path | None = None
    backend: str = "auto"
    batching: LoopSettings = field(default_factory=LoopSettings)
    threshold: float | None = None
    roi: Path | None = None
    output: Path = Path("runs/station")
    reject: RejectSettings = field(default_factory=RejectSettings)
    record: RecordSettings = field(default_factory=lambda: RecordSettings(dir=Path("runs/station")))
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    console: ConsoleSettings = field(default_factory=ConsoleSettings)
    regions: RegionSettings = field(default_factory=RegionSettings)
    cameras: tuple[ViewSettings, ...] = ()   # several cameras (station/views.py); () = the one ``camera``
    group: GroupSettings = field(default_factory=GroupSettings)
    source_file: Path | None = None   # the station file these settings came from (threshold tuning writes it)

    @classmethod
    def from_dict(cls, data: Any, base: Path | None = None) -> "StationConfig":
        """The station file's mapping ``data``, checked. base: the folder relative zone mask paths are read from
        (the only files read on load); None = the current folder, where `fair-edge run` reads every relative path."""
        d = f.check_keys("station", data, ["camera", "bundle", "backend", "batching", "decision", "output",
                                           "reject", "record", "metrics", "mqtt", "console", "regions",
                                           "cameras", "group"])
        d = home_expanded(d)
        if d.get("cameras") is not None and d.get("camera") is not None:
            raise ConfigError("station: expected either camera: (one camera) or cameras: (a list), found both; "
                              "move the camera into the cameras: list.")
        batching = f.with_defaults("batching", d.get("batching"), LoopSettings)
        decision = f.check_keys("decision", d.get("decision"), ["threshold", "roi"])
        threshold = decision.get("threshold")
        output = Path(f.folder_path("station", "output", d.get("output", "runs/station")))
        return cls(
            camera=CameraSettings.from_dict(d.get("camera")),
            bundle=Path(f.text("station", "bundle", d["bundle"])) if d.get("bundle") is not None else None,
            backend=f.choice("station", "backend", d.get("backend", "auto"), BACKEND_NAMES),
            batching=LoopSettings(
                max_batch=f.integer("batching", "max_batch", batching["max_batch"], minimum=1, maximum=MAX_BATCH),
                max_wait_ms=f.number("batching", "max_wait_ms", batching["max_wait_ms"], minimum=0,
                                     maximum=f.DAY_MS),
                max_consecutive_errors=f.integer("batching", "max_consecutive_errors",
                                                 batching["max_consecutive_errors"], minimum=1),
            ),
            threshold=None if threshold is None else f.number("decision", "threshold", threshold),
            roi=Path(f.text("decision", "roi", decision["roi"])) if decision.get("roi") is not None else None,
            output=output,
            reject=RejectSettings.from_dict(d.get("reject")),
            record=RecordSettings.from_dict({"dir": str(output), **record_section(d.get("record"))}),
            metrics=MetricsSettings.from_dict(d.get("metrics")),
            mqtt=MqttSettings.from_dict(d.get("mqtt")),
            console=ConsoleSettings.from_dict(d.get("console")),
            regions=RegionSettings.from_dict(d.get("regions"), base),
            cameras=() if d.get("cameras") is None else parse_views(d["cameras"], FULL_POLICIES, d.get("regions"),
                                                                    base),
            group=GroupSettings.from_dict(d.get("group")),
        ).checked()

    def output_urls(self) -> dict[str, tuple[str, ...]]:
        """Every output URL the station drives, by setting: ``{"reject.sinks": (...), "reject.fault_sinks": (...),
        "cameras[0].reject": (...)}`` (the handshake is not a URL list)."""
        return {"reject.sinks": self.reject.sinks, "reject.fault_sinks": self.reject.fault_sinks,
                **{f"cameras[{i}].reject": view.reject for i, view in enumerate(self.cameras)}}

    def check_outputs(self) -> None:
        """The checks over all of the station's outputs: GPIO lines one station could never open are refused
        (``check_gpio_outputs``), PLC addresses two outputs, or an output and the handshake, write are warned about
        (``warn_shared_outputs``: once per process for each pair, so re-reading the file warns only about a new
        one)."""
        check_gpio_outputs(self.output_urls())
        warn_shared_outputs(self.output_urls(), self.reject.handshake)

    def checked(self) -> "StationConfig":
        """Checks that span sections (several cameras with the reject wiring); returns self."""
        for i, view in enumerate(self.cameras):
            check_fps(f"cameras[{i}]", view.fps)
            check_sink_urls(f"cameras[{i}]", "reject", view.reject)
        self.check_outputs()
        return self._check_wiring()

    def _check_wiring(self) -> "StationConfig":
        """The refusals over the cameras' grouping and the reject wiring (lane outputs, handshake, encoder, offsets),
        without the outputs' warnings; returns self."""
        if not self.cameras:
            if self.group != GroupSettings():
                raise ConfigError("group: only a station with a cameras: list groups views; remove group: or list "
                                  "the cameras under cameras:.")
            return self
        lanes = self.group.by == "lane"
        for view in self.cameras:
            if view.reject and not lanes:
                raise ConfigError(f"cameras ({view.name}).reject: a part station rejects each part once through "
                                  "reject.sinks; per-camera reject outputs need group.by: lane.")
        if lanes and self.reject.sinks:
            raise ConfigError("reject.sinks (--reject): a lane station rejects through each camera's own reject: URLs; move "
                              f"{', '.join(self.reject.sinks)} to the camera of its lane.")
        by_plc = not lanes and self.group.match == "handshake"
        if self.reject.handshake.enabled != by_plc:
            raise ConfigError("group.match: with several cameras the PLC handshake (reject.handshake.url) and "
                              "group: {by: part, match: handshake} go together (each trigger: one frame per camera, "
                              "one result per part id); set both, or neither.")
        if not lanes:
            if self.group.match == "encoder" and not self.reject.encoder:
                raise ConfigError("group.match: encoder matches views by belt count, but reject.encoder is not set; "
                                  "set reject.encoder or use match: window.")
            self._check_offsets_before_gate()
            self.group.min_ng_views(len(self.cameras))
        return self

    def _check_offsets_before_gate(self) -> None:
        """``match: encoder`` with ``reject.encoder_distance``: every camera must see the part before the gate does
        (``offset_counts`` below ``encoder_distance``, both counted from the camera at offset 0); a camera at or past
        the gate could never reject the part it sees."""
        distance = self.reject.encoder_distance
        if self.group.match != "encoder" or distance is None:
            return
        for view in self.cameras:
            if view.offset_counts >= distance:
                raise ConfigError(f"cameras ({view.name}).offset_counts: expected less than reject.encoder_distance "
                                  f"({distance}), found {view.offset_counts}: this camera sees a part at or after "
                                  "the reject gate, too late to reject it; measure both from the camera at offset 0 "
                                  "(move the gate further down the belt or this camera up it).")

    def override(self, **changes: Any) -> "StationConfig":
        """A copy with the given non-None settings replaced (command-line flags win over the file). Outputs changed
        (``--reject``) are checked over the station's outputs as the file's were (``check_outputs``): a GPIO line
        driven twice refused, a PLC address shared with the file's fault output warned about (a pair the file
        already shared was warned about when it was read, and is not again); a changed reject section is held to the file's wiring refusals
        (``_check_wiring``: e.g. ``--reject`` on a lane station, whose outputs are its cameras' own). Other changes
        are not (``rules check --camera`` makes one camera's file of a cell, its ``group:`` kept)."""
        new = replace(self, **{k: v for k, v in changes.items() if v is not None})
        if new.output_urls() != self.output_urls():
            new.check_outputs()
        if new.reject != self.reject:
            new._check_wiring()
        return new


def _folder_given(path: Path) -> str:
    """The refusal for a folder given as the station file: a bundle (pass it as --bundle), one holding YAML files
    (name one), or another folder. The paths it suggests as flags are quoted to paste (``shell_word``)."""
    if (path / "bundle.json").is_file() or (path / "fusion.json").is_file():
        return (f"station file {path} is a bundle folder, not a station YAML file: pass it as --bundle "
                f"{shell_word(path)} (with --source), or give --station the YAML file that names it (bundle: ...).")
    yamls = sorted(p.name for p in path.iterdir() if p.suffix in (".yaml", ".yml"))[:5]
    held = f" it holds {', '.join(yamls)}: give one, e.g. --station {shell_word(path / yamls[0])}" if yamls else (
        " give the station YAML file (see `fair-edge run --help` for its fields)")
    return f"station file {path} is a folder, not a YAML file;{held}."


def load_station(path: str | Path, working_dir: Path | None = None) -> StationConfig:
    """Read and validate a station YAML file; raises ConfigError naming the file and field. working_dir: the folder
    the station's relative paths resolve from, where its zone masks are read on load (``fair-edge install-service``:
    its --working-dir); None = the current folder, as `fair-edge run` reads them. A file that cannot be
    read (permissions, an I/O error) or decoded as text (a Latin-1 comment in a UTF-8 locale) is a ConfigError
    naming the file too: SIGHUP's reload re-reads it on a running station, which refuses the reload and goes on. A key
    given twice in one mapping is refused naming both lines (``fields.StationLoader``): YAML would keep the last."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(_folder_given(path))
    if not path.is_file():
        raise ConfigError(f"station file {path} does not exist. See `fair-edge run --help` for its fields.")
    try:
        data = f.station_yaml(f.read_station_text(path), path)   # a key given twice: ConfigError naming it
    except yaml.YAMLError as exc:
        raise ConfigError(f"station file {path} is not valid YAML: {exc}") from exc
    try:   # an empty file is all defaults; a document that is not a mapping (just `false`) is refused
        return replace(StationConfig.from_dict({} if data is None else data, working_dir), source_file=path)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def view_config(cfg: StationConfig, view: ViewSettings) -> StationConfig:
    """The station's settings as one camera of it sees them: its camera, and its bundle / ROI / threshold /
    regions where it sets them (its ``regions:`` already holds the station's keys it does not set)."""
    camera = CameraSettings(view.source, view.fps, view.loop, view.queue_size, view.full_policy, flip=view.flip,
                            timeout_s=view.timeout_s)
    threshold = cfg.threshold if view.threshold is None else view.threshold
    regions = cfg.regions if view.regions is None else view.regions
    return replace(cfg, camera=camera, cameras=(), bundle=view.bundle or cfg.bundle, roi=view.roi or cfg.roi,
                   threshold=threshold, regions=regions)
