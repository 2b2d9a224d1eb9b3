"""The console's side of a station of several cameras: what it calls to change a camera's bundle
(``CellLoader``, handed to ``console.actions.StationLinks``) and the cell's console itself
(``open_cell_console``: every camera's score calibration feeds its own drift watch)."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

from fair_edge.errors import ConfigError
from fair_edge.runtime.backends import close_scorer
from fair_edge.station.bundles import change_for, load_roi, open_scorer, read_bundle, region_pixel_threshold
from fair_edge.station.config import StationConfig, load_station, view_config
from fair_edge.station.faults import FaultBoard
from fair_edge.station.line_side import LineSide
from fair_edge.station.run import open_console


@dataclasses.dataclass(frozen=True)
class CellLoader:
    """What the console calls to change a camera's bundle (``console.actions.StationLinks``): ``load_views`` and
    ``camera_bundles``. cfg: the running station's settings (each camera's ROI comes from them)."""

    cfg: StationConfig

    def load_views(self, bundle: Path, cameras: tuple[str, ...], thresholds: dict | None = None,
                   regions: dict | None = None) -> dict:
        """Open ``bundle`` once (one backend for these cameras) and each camera's ``ModelChange``: its ROI, and
        ``thresholds[camera]`` where given (not None), else the threshold by the station's rule (``load_change``:
        with an ROI the ROI's own, else the bundle's). regions: camera -> the ``regions:`` settings to check the
        bundle against (a reload's re-read ones, or those in force); the others: the camera's as the station started."""
        views = {v.name: v for v in self.cfg.cameras}
        unknown = [c for c in cameras if c not in views]
        if unknown:
            raise ConfigError(f"cameras: expected some of {', '.join(views)}, found {', '.join(unknown)}")
        loaded = read_bundle(bundle)
        for name in cameras:   # rules (each camera's regions:) cannot judge a bundle without one: refused
            region_pixel_threshold((regions or {}).get(name) or view_config(self.cfg, views[name]).regions, loaded)
        scorer = open_scorer(loaded, self.cfg.backend)
        try:
            return {name: change_for(loaded, scorer, load_roi(view_config(self.cfg, views[name]).roi, loaded),
                                     (thresholds or {}).get(name)) for name in cameras}
        except BaseException:
            close_scorer(scorer)
            raise

    def camera_bundles(self, station_file: Path | None = None, *, bundle: Path | None = None) -> tuple:
        """Each camera's bundle (``console.reload_scope.CameraBundle``) as ``station_file`` names it now (re-read), or
        as the station started (None). bundle: the station's bundle over the re-read file's ``bundle:`` (``fair-edge
        run --bundle``, applied as at the start: the bundle of every camera naming none of its own, so a file
        without ``bundle:`` still reloads); None: the file's. ConfigError when the file names other cameras
        (restart for that), or a camera is left with no bundle."""
        from fair_edge.console.reload_scope import CameraBundle

        cfg = self.cfg if station_file is None else load_station(Path(station_file)).override(bundle=bundle)
        names, running = [v.name for v in cfg.cameras], [v.name for v in self.cfg.cameras]
        if names != running:
            raise ConfigError(f"{station_file}: expected the cameras {', '.join(running)} (the running station's), "
                              f"found {', '.join(names) or 'none'}; restart the station to change its cameras")
        out = []
        for view in cfg.cameras:
            seen = view_config(cfg, view)   # the camera's bundle, threshold and regions, else the station's
            if seen.bundle is None:
                raise ConfigError(f"{station_file}: cameras ({view.name}): no bundle; set bundle: for the station "
                                  "or the camera")
            out.append(CameraBundle(view.name, Path(seen.bundle), view.bundle is not None, seen.threshold,
                                    seen.regions))
        return tuple(out)


def open_cell_console(cfg: StationConfig, models, faults: FaultBoard | None, stack: contextlib.ExitStack,
                      line: LineSide, export_reviewed=None):
    """The cell's console (``open_console``): each camera's score calibration, from ``models``
    (``cell_models.CellModels``: ``bundles`` by resolved path, ``calibrations`` by camera), feeds that camera's own
    drift watch; the first camera's loaded bundle is the console's top-line one; swaps and SIGHUP load bundles
    per camera (``CellLoader``); it sees every view, and knows each camera's loaded bundle (``start_bundles``)."""
    from fair_edge.console.actions import StationLinks

    lead = cfg.cameras[0]
    lead_cfg = view_config(cfg, lead)
    bundle = models.bundles[Path(lead_cfg.bundle).resolve()][0]
    loader = CellLoader(cfg)
    links = StationLinks(load_station=load_station, export_reviewed=export_reviewed, load_views=loader.load_views,
                         camera_bundles=loader.camera_bundles)
    console = open_console(lead_cfg, bundle, faults, stack, line.metrics,
                           links=links, calibrations={v.name: models.calibrations.get(v.name) for v in cfg.cameras},
                           stop=line.stop)
    # each camera's loaded bundle: the map a console swap under region rules is compared with, not its folder re-read
    console.start_bundles({v.name: models.bundles[Path(view_config(cfg, v).bundle).resolve()][0]
                           for v in cfg.cameras})
    line.callbacks.append(console.observe)
    return console
