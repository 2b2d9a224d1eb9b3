"""A cell's models: every camera's bundle, applied threshold and ROI read and checked before the first model
opens (``read_camera_models``), then one loaded scorer per distinct bundle and each camera's ``ViewDecider`` over
it (``CellModels``, which ``cell.run_cell`` opens and closes)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from fair_edge.errors import ConfigError
from fair_edge.runtime.backends import close_scorer
from fair_edge.runtime.hotswap import model_id
from fair_edge.station.bundles import (check_applied_threshold, load_roi, open_regions, open_scorer, read_bundle,
                                      resolve_threshold)
from fair_edge.station.config import StationConfig, view_config
from fair_edge.station.inspector import ViewDecider


@dataclasses.dataclass(frozen=True)
class CameraModel:
    """One camera's model as read before any backend opens (``read_camera_models``). cfg: the station as the camera
    sees it (``view_config``); key: its bundle folder, resolved (one backend per distinct one); bundle: read and
    verified (``Bundle`` or ``FusedBundle``); roi: its mask weights, (H, W) float32 (``load_roi``), or None."""

    cfg: StationConfig
    key: Path
    bundle: object
    roi: object


def read_camera_models(cfg: StationConfig) -> dict[str, CameraModel]:
    """Camera name -> its ``CameraModel``, in the station file's order: each distinct bundle read once, the threshold
    applied to each camera checked against its bundle (``bundles.check_applied_threshold``: one applied from the
    console on another model is refused, naming the camera) and its ROI read (``load_roi``). What ``run_station``
    refuses before its model opens, refused here before any camera's model opens (ConfigError naming the camera or
    the field): before, a later camera's ROI or missing bundle was refused after the earlier cameras' models had
    loaded, and each camera's ROI after its own."""
    read: dict[Path, object] = {}
    cameras: dict[str, CameraModel] = {}
    for view in cfg.cameras:
        vcfg = view_config(cfg, view)
        if vcfg.bundle is None:
            raise ConfigError(f"cameras ({view.name}): no bundle; set bundle: for the station or the camera.")
        key = Path(vcfg.bundle).resolve()
        if key not in read:
            read[key] = read_bundle(vcfg.bundle)
        check_applied_threshold(vcfg, read[key], view.name)
        cameras[view.name] = CameraModel(vcfg, key, read[key], load_roi(vcfg.roi, read[key]))
    return cameras


class CellModels:
    """One loaded model per distinct bundle, and each camera's ``ViewDecider`` over it. Every camera's bundle, applied
    threshold and ROI are read and checked before the first model opens (``read_camera_models``)."""

    def __init__(self, cfg: StationConfig, scorer=None) -> None:
        self.views: dict[str, ViewDecider] = {}
        self.bundles: dict[Path, tuple] = {}   # bundle path -> (bundle, scorer)
        self.calibrations: dict[str, object] = {}   # camera -> the calibration of its decision score (or None)
        cameras = read_camera_models(cfg)   # a refusal there has opened no model
        try:
            for name, camera in cameras.items():
                if camera.key not in self.bundles:
                    self.bundles[camera.key] = (camera.bundle, scorer or open_scorer(camera.bundle, cfg.backend))
                bundle, shared = self.bundles[camera.key]
                decided = resolve_threshold(camera.cfg, bundle, shared.graph_threshold, camera.roi)   # ROI: its own
                self.calibrations[name] = decided.calibration
                self.views[name] = ViewDecider(shared, decided.value, camera.roi, model_id(bundle),
                                               open_regions(camera.cfg, bundle, shared.graph_threshold), decided.grid,
                                               bundle.map_area)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Retire each loaded scorer once (``runtime.backends.close_scorer``: its backend and its pre-processing)."""
        closed = set()
        for _, scorer in self.bundles.values():
            if id(scorer) not in closed:
                closed.add(id(scorer))
                close_scorer(scorer)

    def close_swapped(self) -> None:
        """Retire the scorers the cameras took by hot swap (the loaded ones close with ``close``)."""
        loaded = {id(s) for _, s in self.bundles.values()}
        for decider in self.views.values():
            if id(decider.scorer) not in loaded:
                loaded.add(id(decider.scorer))
                close_scorer(decider.scorer)
