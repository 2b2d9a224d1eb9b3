"""The camera flags of ``fair-edge run`` and ``fair-edge collect``: a source given by ``--camera`` / ``--source``
over a station file's camera, and ``--flip`` for a ``csi:`` camera (checked as the station file's ``flip:``)."""

from __future__ import annotations

import logging
from dataclasses import replace

from fair_edge.cameras.opencv import redact_url
from fair_edge.cameras.registry import STATION_OPTION_KINDS, check_flip, check_kind_takes, options_not_taken
from fair_edge.station.config import CameraSettings

log = logging.getLogger(__name__)

FLIP_HELP = ("A csi: camera's nvvidconv flip-method, 0-7 (0 = none, 2 = rotate 180; 1, 3, 5 and 7 turn the image: "
             "frames height x width), as the station file's flip:. Train on frames taken with the flip the "
             "station uses.")


def flip_options(flip: int | None, spec: str) -> dict[str, int]:
    """The source options ``--flip`` gives the camera ``spec``: {} when left out (None) or 0, else ``{"flip": flip}``.
    ConfigError naming --flip, as for the station file's flip:, for a value out of 0-7 or a camera that is not csi:."""
    if flip is None:
        return {}
    check_flip("--flip", flip)
    if not flip:
        return {}
    check_kind_takes("--flip", "flip", spec, "leave out --flip")
    return {"flip": flip}


def camera_over_file(cam: CameraSettings, spec: str | None, flip: int | None) -> CameraSettings:
    """The station file's camera ``cam`` with the flags over it: ``spec`` (the --camera spec, or --source's
    ``replay_spec``; None = the file's source) and ``flip`` (--flip; None = the file's, or none for a new source).

    A new source drops the file's options its kind does not take (``STATION_OPTION_KINDS``: timeout_s replaying a
    folder, flip on an aravis: camera), with one warning naming them, so the production station file replays
    unedited; ``--camera csi:N`` keeps the file's flip. ConfigError for a --flip the camera does not take."""
    if spec is not None:
        settings = {name: getattr(cam, name) for name in STATION_OPTION_KINDS}
        dropped = options_not_taken(spec, settings)
        if dropped:
            log.warning("camera: %s given by flag over the station file's %s: left out the file's %s (%s)",
                        redact_url(spec), redact_url(cam.source), ", ".join(f"{n}: {settings[n]}" for n in dropped),
                        "; ".join(f"{n} is for {' and '.join(k + ':' for k in STATION_OPTION_KINDS[n])} cameras"
                                  for n in dropped))
        cam = replace(cam, source=spec, **{name: getattr(CameraSettings, name) for name in dropped})
    if flip is None:
        return cam
    flip_options(flip, cam.source)
    return replace(cam, flip=flip)
