"""Turn a source spec string (a CLI flag, a YAML ``camera:`` field) into a frame source.

Spec grammar: ``KIND:TARGET`` with KIND a key of :data:`SOURCES`, or a bare TARGET whose
kind is guessed by :data:`AUTO_RULES` (first match wins)::

    0, /dev/video0, rtsp://cam/stream, http://...  -> opencv
    "... ! appsink"                                -> gst
    a directory                                    -> folder (image replay)
    an image file (part.png: IMAGE_SUFFIXES)       -> folder (a one-image replay, training's decoder)
    any other file                                 -> video (video replay)
    opencv:clip.avi  csi:0  genicam:SERIAL  aravis:ID  line:  -> explicit kind

Keyword options go to the source's constructor; an unknown option is refused with the
valid list and a "did you mean".
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fair_edge.errors import ConfigError, did_you_mean
from fair_edge.fields import is_int, is_number

from .base import READ_SPAN_S, CaptureSettings, FrameSource
from .aravis import AravisSource
from .capture import FIRST_FRAME_READS, FIRST_FRAME_WAIT_S
from .genicam import GenICamSource
from .gstreamer import FLIP_METHODS, GStreamerSource, jetson_csi_pipeline
from .opencv import OpenCVSource, classify_target, redact_url
from .replay import FolderReplaySource, VideoReplaySource, is_image_file
from .synthetic import LineSource


def _csi(target: str, *, width: int = 1920, height: int = 1080, fps: float = 30, flip: int = 0,
         out_width: int | None = None, out_height: int | None = None,
         name: str | None = None) -> GStreamerSource:
    if not target.strip().isdigit():
        raise ConfigError(f"csi source: expected a sensor id like 'csi:0', found 'csi:{target}'")
    pipeline = jetson_csi_pipeline(int(target), width, height, fps, flip, out_width, out_height)
    return GStreamerSource(pipeline, fps=fps, name=name or f"csi:{int(target)}")


GENTL_PATH = "GENICAM_GENTL64_PATH"   # the GenTL standard's variable: folders holding producers (.cti), os.pathsep


def gentl_producer(environ: dict[str, str] | None = None) -> Path:
    """The GenTL producer (.cti) a ``genicam:`` spec without ``cti`` uses: the one ``.cti`` file in the folders
    of ``$GENICAM_GENTL64_PATH``, which camera SDK installers set (the GenTL standard's way to find producers;
    a station file and the command line both reach it, a systemd unit through ``install-service --env``).
    ConfigError naming the variable, what it holds and the fix when it finds none or several."""
    value = (os.environ if environ is None else environ).get(GENTL_PATH, "")
    folders = [Path(f) for f in value.split(os.pathsep) if f]
    found = sorted({p for f in folders if f.is_dir() for p in f.glob("*.cti") if p.is_file()})
    fix = (f"set {GENTL_PATH} to the folder of your camera SDK's GenTL producer, e.g. "
           f"{GENTL_PATH}=/opt/pylon/lib/gentlproducer/gtl (for a service: fair-edge install-service ... "
           f"--env {GENTL_PATH}=DIR), or pass cti=PATH where the source is opened in code")
    if len(found) == 1:
        return found[0]
    what = (f"found {len(found)}: {', '.join(map(str, found))}" if found else
            f"found none in {value!r}" if value else "it is not set")
    raise ConfigError(f"genicam source: expected one GenTL producer (.cti) in the folders of {GENTL_PATH}; "
                      f"{what}; {fix}")


def _genicam(target: str, *, cti: str | Path | None = None, index: int = 0, timeout_s: float = 2.0,
             fps: float | None = None, name: str | None = None) -> GenICamSource:
    return GenICamSource(gentl_producer() if cti is None else cti, serial=target or None, index=index,
                         timeout_s=timeout_s, fps=fps, name=name)


def _line(target: str, **opts: object) -> LineSource:
    if target or "images" not in opts:
        raise ConfigError("line source: expected 'line:' with option images=[array, ...], found "
                          f"'line:{target}' with options {sorted(opts)}; to replay a folder use folder:PATH")
    return LineSource(**opts)


@dataclass(frozen=True)
class SourceKind:
    """One registered kind: ``build(target, **opts)`` makes an unopened source.

    options_of: the callable whose keyword-only parameters are the valid options.
    extra_options: further valid option names (positional parameters passed by keyword).
    """

    build: Callable[..., FrameSource]
    options_of: Callable[..., object]
    summary: str
    extra_options: tuple[str, ...] = ()


SOURCES: dict[str, SourceKind] = {
    "opencv": SourceKind(lambda t, **o: OpenCVSource(t, **o), OpenCVSource,
                         "cv2.VideoCapture: camera index, /dev/videoN, RTSP/HTTP URL or video file"),
    "gst": SourceKind(lambda t, **o: GStreamerSource(t, **o), GStreamerSource,
                      "GStreamer pipeline ending in appsink (OpenCV built with GStreamer)"),
    "csi": SourceKind(_csi, _csi, "Jetson CSI camera by sensor id, via nvarguscamerasrc"),
    "folder": SourceKind(lambda t, **o: FolderReplaySource(t, **o), FolderReplaySource,
                         "replay a folder of images (sorted by name)"),
    "video": SourceKind(lambda t, **o: VideoReplaySource(t, **o), VideoReplaySource,
                        "replay a video file"),
    "genicam": SourceKind(_genicam, _genicam, "GenICam camera via harvesters; target = serial number"),
    "aravis": SourceKind(lambda t, **o: AravisSource(t, **o), AravisSource,
                         "GenICam camera via Aravis (no vendor SDK); target = device id or IP, empty = first"),
    "line": SourceKind(_line, LineSource, "synthetic line from images=[...] with injectable faults",
                       ("images",)),
}

# the range of a station file's timeout_s, seconds. Shortest: open()'s FIRST_FRAME_READS reads for a first frame span
# its FIRST_FRAME_WAIT_S (a shorter wait gives up sooner, blaming the network); a free-running camera still needs a
# frame within misses_before_reconnect waits. Longest, per kind: a read begun just before stop() must end within the
# capture's stop wait, with base.READ_AFTER_S of it left for what follows the read (the frame's copy and conversion,
# the source's release: GenTL's stop and destroy): READ_SPAN_S for the read. aravis: its wait (not interruptible) plus
# a register read after it (a triggered camera's link check, base.awaiting_trigger): half of that, the other half for
# that read. genicam: a free-running camera's one fetch is all of its read; a triggered camera's wait is fetched in
# genicam.FETCH_STEP_S steps that stop() ends (GenICamSource.interrupt), before its link check: all of it (the
# source's own default, 2 s).
READ_WAIT_MIN_S = FIRST_FRAME_WAIT_S / FIRST_FRAME_READS
READ_WAIT_MAX_S: dict[str, float] = {"aravis": READ_SPAN_S / 2, "genicam": READ_SPAN_S}
# station-file camera settings that go to the source -> the kinds that take them. timeout_s: the GenICam cameras'
# wait for one frame, the kinds READ_WAIT_MAX_S bounds (not opencv:'s: a network stream's read waits READ_SPAN_S, not
# settable, and its open_timeout_s, 5 s, bounds opening it)
STATION_OPTION_KINDS: dict[str, tuple[str, ...]] = {"flip": ("csi",), "timeout_s": tuple(READ_WAIT_MAX_S)}
# what a free-running camera slower than one frame per READ_WAIT_MAX_S[kind] needs ({fps}: 1 / that), for the refusal
SLOW_CAMERA_FIXES: dict[str, str] = {
    "aravis": "give it fps: {fps} or more (the source sets the camera's frame rate), or trigger it (TriggerMode On, "
              "fps: null: a wait without a part is no missed frame)",
    "genicam": "set its frame rate to {fps} fps or more in the vendor's tool, or trigger it (TriggerMode On in the "
               "vendor's tool: a wait without a part is no missed frame)",
}

AUTO_RULES: list[tuple[Callable[[str], bool], str]] = [
    (lambda s: classify_target(s) in ("index", "url", "device"), "opencv"),
    (lambda s: "!" in s and "appsink" in s, "gst"),
    (os.path.isdir, "folder"),
    (is_image_file, "folder"),   # one image: decoded as training decodes it, not as a one-frame FFmpeg video
    (os.path.isfile, "video"),
]


def explicit_kind(spec: str) -> str | None:
    """The KIND of a ``KIND:TARGET`` spec (``csi`` for ``csi:0``); None for a bare target (``0``, a folder, a URL),
    whose kind ``_split`` guesses. Reads no file."""
    kind, sep, rest = spec.partition(":")
    return kind if sep and kind in SOURCES and not rest.startswith("//") else None


def _split(spec: str) -> tuple[str, str]:
    kind = explicit_kind(spec)
    if kind is not None:
        return kind, spec.partition(":")[2]
    kind, sep, _ = spec.partition(":")
    for matches, guessed in AUTO_RULES:   # not ``kind``: the typed KIND is the did-you-mean's word below
        if matches(spec):
            return guessed, spec
    raise ConfigError(f"camera source {spec!r}: expected a camera index, /dev/videoN, URL, GStreamer pipeline, "
                      f"existing folder or video file, or KIND:TARGET with KIND in {sorted(SOURCES)}; "
                      f"found {_not_found_text(spec, kind, sep)}")


def _not_found_text(spec: str, kind: str, sep: str) -> str:
    """What ``_split`` found for a ``spec`` no rule takes, for its refusal. A KIND:TARGET (or a kind's name alone,
    ``aravis``) is a kind it does not know, with a "did you mean". Any other bare value is a path that is not
    there: named as looked for, a relative one under the current folder it is read from (not the station file's
    folder); no kind is guessed for it (``bilder`` is a missing folder, not a misspelt ``folder:``)."""
    if sep or spec.lower() in SOURCES or "!" in spec:
        return f"no such device, file or kind{did_you_mean(kind if sep else spec, SOURCES, suffix=':')}"
    if os.path.isabs(spec):
        return f"no device and no folder or file {spec}"
    return (f"no device and no folder or file {os.path.abspath(spec)}: a relative source is read from the current "
            f"folder ({os.getcwd()}), not the station file's; give an absolute path, or start the station in the "
            "folder the path is relative to")


def valid_options(kind: str) -> list[str]:
    """The option names a source of ``kind`` (a key of ``SOURCES``) takes, sorted."""
    entry = SOURCES[kind]
    params = inspect.signature(entry.options_of).parameters
    return sorted([n for n, p in params.items() if p.kind is p.KEYWORD_ONLY] + list(entry.extra_options))


def _check_options(kind: str, opts: dict[str, object]) -> None:
    valid = valid_options(kind)
    for key in opts:
        if key not in valid:
            hint = did_you_mean(key, valid)
            raise ConfigError(f"{kind} source: unknown option {key!r}{hint}; valid options: {valid}")


def station_options(where: str, source: str, flip: object = 0, timeout_s: object = None) -> dict[str, object]:
    """The options a station file's camera (``where``: ``camera`` or ``cameras[i]``) gives its source besides fps
    and loop, checked, as ``parse_source`` takes them (only those set: {} when all are at their defaults).

    flip: a ``csi:`` camera's ``nvvidconv flip-method``, an integer in ``FLIP_METHODS`` (0 = none); 1, 3, 5 and 7
    turn the image, so its frames come height x width. timeout_s: how long one read of an ``aravis:`` or
    ``genicam:`` camera waits for a frame, seconds, from ``READ_WAIT_MIN_S`` to ``READ_WAIT_MAX_S`` of its kind;
    None = the source's own (``timeout_defaults``). ConfigError naming the field, the value and the fix for a value
    out of range or a setting the source's kind does not take."""
    check_flip(f"{where}.flip", flip)
    opts = {key: value for key, value in (("flip", flip), ("timeout_s", timeout_s)) if value}
    for option in opts:
        check_kind_takes(f"{where}.{option}", option, source, f"remove {option}: from {where}")
    if timeout_s is not None:
        check_read_wait(f"{where}.timeout_s", timeout_s, source)
    return opts


def check_read_wait(field: str, timeout_s: object, source: str) -> None:
    """ConfigError naming ``field``, the range for ``source``'s kind and what each side costs when ``timeout_s``
    (seconds) is outside ``READ_WAIT_MIN_S`` to ``READ_WAIT_MAX_S[kind]`` (or ``source`` takes no timeout_s)."""
    kind = explicit_kind(source)
    if kind not in READ_WAIT_MAX_S:
        check_kind_takes(field, "timeout_s", source, f"remove timeout_s: from {field.rpartition('.')[0]}")
    longest = READ_WAIT_MAX_S[kind]
    if is_number(timeout_s) and READ_WAIT_MIN_S <= timeout_s <= longest:
        return
    raise ConfigError(f"{field}: expected how long a read waits for a frame, seconds, from {READ_WAIT_MIN_S:g} to "
                      f"{longest:g} on {kind}:, or null for the source's own "
                      f"({timeout_defaults()}); found {timeout_s!r}. Shorter: a wait under a free-running camera's "
                      f"frame period is a missed frame ({CaptureSettings.misses_before_reconnect} in a row reconnect "
                      "it) and its first frame is given up on; on genicam: one timeout is a reconnect. Longer: a read "
                      "(on aravis: and the link check after it) would outlast the station's stop wait. A free-running "
                      f"camera slower than one frame per {longest:g} s: "
                      f"{SLOW_CAMERA_FIXES[kind].format(fps=f'{1 / longest:g}')}")


def check_flip(field: str, flip: object) -> None:
    """ConfigError naming ``field`` (``camera.flip``, ``--flip``) and the methods when ``flip`` is no integer in
    ``FLIP_METHODS``."""
    if not is_int(flip) or flip not in FLIP_METHODS:
        methods = ", ".join(f"{n} = {name}" for n, name in FLIP_METHODS.items())
        raise ConfigError(f"{field}: expected an nvvidconv flip-method, an integer 0-7 ({methods}), found {flip!r}")


def timeout_defaults() -> str:
    """The read waits of the kinds a station file's ``timeout_s`` is for, at their defaults, for a message:
    "aravis: 1 s, genicam: 2 s" (read from the sources' signatures: the one place they are written)."""
    return ", ".join(f"{kind}: {inspect.signature(SOURCES[kind].options_of).parameters['timeout_s'].default:g} s"
                     for kind in STATION_OPTION_KINDS["timeout_s"])


def read_wait_ranges() -> str:
    """The range of a station file's timeout_s per kind, for a message: "aravis: 0.3-1 s, genicam: 0.3-2 s"."""
    return ", ".join(f"{kind}: {READ_WAIT_MIN_S:g}-{longest:g} s" for kind, longest in READ_WAIT_MAX_S.items())


def check_kind_takes(field: str, option: str, source: str, remove: str) -> None:
    """ConfigError naming ``field`` when ``source``'s kind is none of ``STATION_OPTION_KINDS[option]`` (e.g. ``flip``
    on a folder); ``remove``: how to leave the setting out (``remove flip: from camera``, ``leave out --flip``)."""
    takers = STATION_OPTION_KINDS[option]
    if explicit_kind(source) in takers:
        return
    raise ConfigError(f"{field}: for {' and '.join(k + ':' for k in takers)} cameras only; found the source "
                      f"{redact_url(source)!r}; {remove}, or give the source as {takers[0]}:TARGET")


def options_not_taken(source: str, options: dict[str, object]) -> list[str]:
    """The names among ``options`` (station camera options, ``STATION_OPTION_KINDS`` keys, set: not at their
    defaults) that ``source``'s kind does not take: what a source given by flags leaves out of the file's camera."""
    kind = explicit_kind(source)
    return [name for name, value in options.items() if value and kind not in STATION_OPTION_KINDS[name]]


def parse_source(spec: str | int | Path, **opts: object) -> FrameSource:
    """Build the (unopened) source for ``spec``; raises ConfigError for a bad spec or option."""
    spec = str(spec)
    kind, target = _split(spec)
    _check_options(kind, opts)
    return SOURCES[kind].build(target, **opts)


def open_source(spec: str | int | Path, **opts: object) -> FrameSource:
    """Build and open the source for ``spec`` (fail fast: a first frame has been read).

    Raises ConfigError for a bad spec or option, CameraError if the source cannot deliver.
    Use it as a context manager: ``with open_source("0") as src: frame = src.read()``.
    """
    source = parse_source(spec, **opts)
    source.open()
    return source
