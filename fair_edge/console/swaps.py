"""The console's bundle swaps (``BundleSwaps``, one per ``StationActions``): a bundle is loaded on a thread of its own
("bundle-swap": a load takes seconds), checked against what each of its cameras runs (``swap_refusals``: region rules
on another map scale, frames off its grid) and, when all loaded and none refused, handed to each camera's switch
(the loop takes it between batches), each switch audited. A failure switches no camera: what was loaded is closed and
``StationActions.swap_status`` says why (a reload's, naming who asked and where its bundle was named: ``ReloadFrom``).
``close`` at the station's stop lets no swap start and none loading switch, and joins the thread."""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from pathlib import Path
from threading import Event, Lock
from typing import Any, Protocol

from fair_edge.console import tuning
from fair_edge.console.drift import Reference
from fair_edge.console.feed import StationFeed
from fair_edge.console.journal import Journal, utc_now, warning_of
from fair_edge.console.refusals import StationStopping, SwapBusy
from fair_edge.console.reload_scope import ReloadFrom
from fair_edge.console.swap_refusals import grid_refusal, scale_refusal
from fair_edge.console.threshold_refusals import regions_in_force
from fair_edge.errors import ConfigError, FairEdgeError, RecorderError
from fair_edge.runtime.backends import close_scorer
from fair_edge.runtime.hotswap import ModelChange

log = logging.getLogger(__name__)


class SwapOwner(Protocol):
    """What ``BundleSwaps`` uses of the actions that own it (``actions.StationActions``): the station's feed and audit
    log (taken once), and, read at each call, ``links`` (``StationLinks``: ``load_model``, ``load_views``), ``lock``
    (the RLock threshold applies and swap starts take turns on), ``swap_status`` (how the last swap went: a swap
    writes it) and ``decider(camera)`` (what decides a camera's views: its threshold, model and switch)."""

    feed: StationFeed
    audit: Journal
    links: Any
    lock: Any
    swap_status: dict

    def decider(self, camera: str) -> Any: ...


class BundleSwaps:
    """The swaps of ``actions`` (``StationActions``): started by its ``swap`` and ``swap_cameras`` once their input is
    checked; what it uses of them is ``SwapOwner``. ``maps_in_force``: camera ("" with one) -> (model id, its FP32
    reference graph: ``tuning.reference_graph``) of the bundle it started with (``started_with``, from the loaded
    bundle) or was last switched to from here (a swap, a reload): the map a later console swap is compared with
    (``_map_in_force``). Never read back from the bundle folder, which may hold another build by the time of the swap
    (rebuilt in place)."""

    def __init__(self, actions: SwapOwner) -> None:
        self.actions = actions
        self.feed, self.audit = actions.feed, actions.audit
        self.maps_in_force: dict[str, tuple[str, str]] = {}
        self._swapper: threading.Thread | None = None   # the swap thread last started ("bundle-swap"), joined by close
        self._closed = Event()   # set by ``close``: no swap starts, and one loading switches no camera
        # held by ``close`` to set ``_closed`` and by a swap thread from its last look at it through its switch: a swap
        # either switches before close returns, or never
        self._switching = Lock()

    def start_swap(self, target, *args, status: dict, reload: ReloadFrom | None = None) -> dict:
        """Run ``target(*args, reload=reload)`` (``load`` or ``load_views``) on the swap thread, ``swap_status``
        "loading" meanwhile; SwapBusy while one loads, StationStopping once ``close`` began, RecorderError (nothing
        started) while the audit log cannot be written."""
        with self.actions.lock:
            if self._closed.is_set():
                raise StationStopping(f"the station is stopping: bundle {status.get('bundle', '')} was not loaded")
            if self.actions.swap_status["state"] == "loading":
                raise SwapBusy(f"a bundle is already loading ({self.actions.swap_status['bundle']}); wait for it")
            self.audit.check_writable()
            self.actions.swap_status = {"state": "loading", **status, "since": utc_now()}
            # a daemon still, so a load stuck past ``close``'s wait cannot hold the process up; ``close`` joins it
            self._swapper = threading.Thread(target=self._guarded, args=(target, reload, *args), name="bundle-swap",
                                             daemon=True)
            self._swapper.start()
        return self.actions.swap_status

    def close(self, timeout_s: float) -> bool:
        """At the station's stop: no swap starts from now on (StationStopping), a swap loading switches no camera
        (what it loaded is closed), and the swap thread is joined, waiting up to ``timeout_s`` seconds for a load in
        progress (a backend still in native code when the interpreter exits aborts the process). Returns whether
        no swap thread is left running; one still loading after ``timeout_s`` is logged as a warning."""
        self.refuse_swaps()
        swapper = self._swapper
        if swapper is None:
            return True
        swapper.join(timeout_s)
        if swapper.is_alive():
            log.warning("the station stops while bundle %s is still loading (waited %.0f s for it): the process may "
                        "exit with the load unfinished", self.actions.swap_status.get("bundle", ""), timeout_s)
            return False
        return True

    def refuse_swaps(self) -> None:
        """``close``'s first step, without the wait: no swap starts from now on, and one loading switches no camera
        (a swap switching now has switched when this returns)."""
        with self._switching:
            self._closed.set()

    def _stopped(self, bundles: str, changes) -> bool:
        """Whether the station is stopping (``close``): then the loaded ``changes``' backends are closed (no camera
        will run them) and the swap ends as failed, logged as a warning. Asked before a load, and right before a
        switch holding ``_switching`` (so ``close`` cannot come between the answer and the switch)."""
        if not self._closed.is_set():
            return False
        _close_loaded(changes)
        log.warning("bundle swap dropped: the station is stopping (%s not switched to)", bundles)
        self.actions.swap_status = {"state": "failed", "bundle": bundles, "error": "the station is stopping",
                                    "since": utc_now()}
        return True

    def _guarded(self, target, reload: ReloadFrom | None, *args) -> None:
        """The swap thread: ``target(*args, reload=reload)``. Whatever it raises ends the swap as failed (logged, its
        text in ``swap_status``), never left "loading": that would refuse every later swap and SIGHUP until a
        restart."""
        try:
            target(*args, reload=reload)
        except Exception as exc:  # noqa: BLE001 - see the docstring
            self._swap_failed(str(self.actions.swap_status.get("bundle", "")), exc, reload)

    def _swap_failed(self, bundle: str, exc: Exception, reload: ReloadFrom | None = None,
                     cameras: tuple[str, ...] = ()) -> None:
        """A swap that did not happen: logged (a traceback for what is not a FairEdgeError) and in ``swap_status``.
        A reload's (``reload``) is refused as the reload's: who asked, and where the station file names the bundle of
        ``cameras`` (those whose load failed: ``ReloadFrom.refusal``), logged and shown so, with ``who``."""
        text = str(exc) if isinstance(exc, FairEdgeError) else f"{type(exc).__name__}: {exc}"
        if reload is None:
            log.error("bundle swap refused: %s", text, exc_info=not isinstance(exc, FairEdgeError))
            self.actions.swap_status = {"state": "failed", "bundle": bundle, "error": text, "since": utc_now()}
            return
        refusal = reload.refusal(text, cameras)
        log.error("%s", refusal, exc_info=not isinstance(exc, FairEdgeError))
        self.actions.swap_status = {"state": "failed", "bundle": bundle, "error": refusal, "who": reload.who,
                                    "since": utc_now()}

    def reload_refused(self, who: str, text: str) -> None:
        """A reload refused before it started a swap (``StationConsole.reload_bundle``: a station file that does not
        load, a threshold applied on another model, ...; logged there): ``swap_status`` says so, "failed" with
        ``error`` "bundle reload refused (WHO): TEXT" and ``who``, so ``/api/swap`` and the live page no longer show
        the swap before it as the last word. Left as it is while a swap loads (it ends as done or failed itself)."""
        with self.actions.lock:
            if self.actions.swap_status.get("state") != "loading":
                self.actions.swap_status = {"state": "failed", "error": f"bundle reload refused ({who}): {text}",
                                            "who": who, "since": utc_now()}

    def load(self, bundle: Path, inspector, who: str, threshold: float | None, regions=None,
             reload: ReloadFrom | None = None) -> None:
        """One camera: load ``bundle``, checked against ``regions`` (a reload's, else those in force), then switch
        to it, with ``regions`` when given (none when the load fails, the regions kept would judge it on another scale
        (``scale_refusal``), its frames are off its grid, or the audit log can no longer be written: the loaded backend
        closed, the swap failed; a reload's, ``reload``, refused as such). Done with a ``warning`` when the switch is
        made but its audit row fails."""
        old = {"model": inspector.model, "bundle": str(self.feed.bundle_path or "")}
        if self._stopped(str(bundle), []):
            return
        checked = regions if regions is not None else regions_in_force(inspector)
        try:
            change = self.actions.links.load_model(bundle, threshold=threshold,
                                                   **({} if checked is None else {"regions": checked}))
        except Exception as exc:  # noqa: BLE001 - a loader's own errors too (onnxruntime raises RuntimeError)
            self._swap_failed(str(bundle), exc, reload, ("",))
            return
        if regions is not None:
            change = replace(change, regions=regions)
        refusal = (scale_refusal(change, inspector, checked, str(bundle), self._map_in_force("", inspector))
                   if regions is None else "") or \
            grid_refusal(self.feed, change, "", checked, str(bundle))
        if refusal:   # its region rules would judge on another scale, or every frame would be NG: the old model stays
            _close_loaded([change])
            self._swap_failed(str(bundle), ConfigError(refusal), reload)
            return
        with self._switching:
            if not self._stopped(str(bundle), [change]):
                self._switch(inspector, change, old, who, str(bundle), reload)

    def _camera_refusal(self, change: ModelChange, camera: str, reloaded, bundle: str) -> str:
        """Why the loaded ``change`` (of ``bundle``) may not run on ``camera`` of several: the region rules it keeps
        (``reloaded`` None: a console swap keeps the camera's in force) on another map scale (``scale_refusal``), or
        its frames off the grid (``grid_refusal``); "" when it may."""
        if reloaded is not None:
            return grid_refusal(self.feed, change, camera, reloaded, bundle)
        decider = self.actions.decider(camera)
        kept = regions_in_force(decider)
        return (scale_refusal(change, decider, kept, bundle, self._map_in_force(camera, decider))
                or grid_refusal(self.feed, change, camera, kept, bundle))

    def started_with(self, camera: str, model: str, bundle) -> None:
        """Record the model ``camera`` (one camera: "") starts with: its id ``model`` (the decider's) and the FP32
        reference graph of ``bundle``, the loaded bundle it came from (``tuning.reference_graph``; "" for a fused one
        or a stand-in): the map a console swap is compared with until one switches the camera (``_map_in_force``)."""
        self.maps_in_force[camera] = (model, tuning.reference_graph(bundle))

    def _map_in_force(self, camera: str, decider) -> tuple[str, str]:
        """(model id, SHA-256 of its FP32 reference graph, "" when not known: ``tuning.reference_graph``) of the model
        ``camera``'s ``decider`` runs (one camera: ""), or will once its pending change is taken (that change's bundle),
        for ``scale_refusal``: as loaded at the start (``started_with``) or by the swap last switched to from here
        (``maps_in_force``), while the decider still runs that model; the graph is "" otherwise (never re-read from
        the bundle folder: one rebuilt in place since holds another build)."""
        pending = getattr(getattr(decider, "switch", None), "pending", None)
        if pending is not None and pending.scorer is not None:
            return pending.model, tuning.reference_graph(pending.bundle)
        model = str(getattr(decider, "model", "") or "")
        known = self.maps_in_force.get(camera)
        return known if known is not None and known[0] == model else (model, "")

    def _switch(self, inspector, change: ModelChange, old: dict, who: str, bundle: str,
                reload: ReloadFrom | None = None) -> None:
        """One camera: hand the loaded ``change`` (of ``bundle``, as asked for) to ``inspector``'s switch and audit
        it (``load``; ``reload``: a reload's swap, refused as such)."""
        if not self._still_auditable(bundle, [change], reload):
            return
        new_model = _new_model(inspector, change)   # before the request: the model in force or pending until now
        inspector.switch.request(change)
        self.maps_in_force[""] = (change.model, tuning.reference_graph(change.bundle))
        self.feed.use_bundle(bundle, change.bundle.root)   # a link as named: a reload without a station file follows it
        if change.regions is not None:   # the reloaded zones, drawn on the live page and the NG images
            self._show_zones(change.regions.outlines())
        if new_model:   # the same model reloaded (threshold, regions edited) keeps its scores and its drift alarm
            self.feed.drift.reset("", _reference(change))
        row = self.audit.append_made({"action": "swap", "who": who, "old": old,
                                      "new": {"model": change.model, "bundle": str(change.bundle.root),
                                              "threshold": change.threshold}})
        self.actions.swap_status = {"state": "done", "bundle": self.feed.shown_bundle(), "model": change.model,
                                    **warning_of([row]), "since": utc_now()}

    def _still_auditable(self, bundles: str, changes: list[ModelChange], reload: ReloadFrom | None = None) -> bool:
        """Whether the audit log can still be written once the (slow) load is done; if not, the swap fails before
        any camera switches and the loaded ``changes``' backends are closed (no camera runs them). A reload's
        (``reload``) is refused as the reload's, naming no bundle (none is at fault): "bundle reload refused (WHO):
        <the audit log's error>"."""
        try:
            self.audit.check_writable()
        except RecorderError as exc:
            _close_loaded(changes)
            self._swap_failed(bundles, exc, reload)
            return False
        return True

    def load_views(self, plan: dict[Path, tuple[str, ...]], who: str, thresholds: dict[str, float | None],
                   regions: dict | None = None, reload: ReloadFrom | None = None) -> None:
        """Load every bundle of the plan, each checked against its cameras' ``regions`` (a reload's, else those in
        force), then switch each camera (with its ``regions`` where given); a failure (a load, a camera's rules kept
        on another map scale or its frames off the grid: ``_camera_refusal``, an audit log that can no longer be
        written) switches none (loaded backends closed; a reload's, ``reload``, refused as such, naming
        the cameras of the bundle that failed and where the station file names it). Once switching, every camera
        switches: an audit row that fails then is the swap's ``warning``, not a stop (the cameras after it would
        keep the old model)."""
        changes: dict[str, ModelChange] = {}
        bundles = ", ".join(str(b) for b in plan)
        regions = regions or {}
        for bundle, cameras in plan.items():
            if self._stopped(bundles, changes.values()):   # the station stops: load no more bundles
                return
            try:
                checked = {c: r for c in cameras if (r := regions.get(c, self._regions_of(c))) is not None}
                changes.update(self.actions.links.load_views(bundle, cameras, thresholds,
                                                             **({"regions": checked} if checked else {})))
            except Exception as exc:  # noqa: BLE001 - a loader's own errors too (onnxruntime raises RuntimeError)
                _close_loaded(changes.values())   # the bundles loaded before the failure: no camera runs them
                self._swap_failed(bundles, exc, reload, cameras)
                return
        changes = {c: change if c not in regions else replace(change, regions=regions[c])
                   for c, change in changes.items()}
        bundle_of = {camera: str(bundle) for bundle, cameras in plan.items() for camera in cameras}
        refusals = [r for c, change in changes.items()
                    if (r := self._camera_refusal(change, c, regions.get(c), bundle_of[c]))]
        if refusals:   # a camera's rules on another scale, or every frame of a camera NG: no camera switches
            _close_loaded(changes.values())
            self._swap_failed(bundles, ConfigError("; ".join(refusals)), reload)
            return
        with self._switching:
            if not self._stopped(bundles, changes.values()):
                self._switch_views(changes, bundles, who, reload)

    def _switch_views(self, changes: dict[str, ModelChange], bundles: str, who: str,
                      reload: ReloadFrom | None = None) -> None:
        """Several cameras: switch each camera of ``changes`` (camera -> its loaded change) and audit it
        (``load_views``; ``reload``: a reload's swap, refused as such)."""
        if not self._still_auditable(bundles, list(changes.values()), reload):
            return
        rows = []
        for camera, change in changes.items():
            decider = self.actions.decider(camera)
            old = {"model": decider.model, "bundle": str(self.feed.camera_bundles.get(camera, ""))}
            new_model = _new_model(decider, change)
            decider.switch.request(change)
            self.maps_in_force[camera] = (change.model, tuning.reference_graph(change.bundle))
            self.feed.camera_bundles[camera] = change.bundle.root
            if new_model:   # this camera's watch only, and only for another model: the same one keeps its scores
                self.feed.drift.reset(camera, _reference(change))
            if camera == self.feed.lead_camera:   # the console's top-line bundle is the first camera's
                self.feed.use_bundle(None, change.bundle.root)
            rows.append(self.audit.append_made({"action": "swap", "who": who, "camera": camera, "old": old,
                                                "new": {"model": change.model, "bundle": str(change.bundle.root),
                                                        "threshold": change.threshold}}))
        self.actions.swap_status = {"state": "done", "bundle": bundles, "cameras": list(changes),
                                    "models": {c: ch.model for c, ch in changes.items()}, **warning_of(rows),
                                    "since": utc_now()}

    def _regions_of(self, camera: str):
        """The ``regions:`` settings ``camera``'s decider judges with (``regions_in_force``)."""
        return regions_in_force(self.actions.decider(camera))

    def _show_zones(self, outlines: list) -> None:
        """Draw these zone outlines ((K, 2) int32 frame points each) on the live page and the NG images from now on."""
        self.feed.show_zones(outlines)
        if self.feed.recorder is not None:
            self.feed.recorder.show_zones(outlines)


def _new_model(decider, change: ModelChange) -> bool:
    """Whether ``change`` makes ``decider`` (the inspector, or a camera's ``ViewDecider``) run another model than the
    one it runs, or will once its pending change is taken: model ids compared as the inspector compares them at the
    switch (``Inspector._swap_model``; "", an id not known, is another model). Its drift watch starts over only then:
    a reload of the same model (its threshold or regions edited, or nothing) changes no score, so its scores and a
    drift alarm they raised stay."""
    pending = decider.switch.pending
    running = pending.model if pending is not None and pending.scorer is not None else decider.model
    return not change.model or change.model != running


def _reference(change: ModelChange) -> Reference:
    """The calibration distribution of the swapped model's decision score and its size (the drift watch's
    ``Reference``): the change's (with an ROI, of max(map x ROI): ``station.decision``), else, without an ROI, the
    bundle's threshold's; ``Reference()`` = none."""
    threshold = change.calibration
    if threshold is None and change.roi is None:
        threshold = change.bundle.threshold
    return Reference.of(threshold)


def _close_loaded(changes) -> None:
    """Close the scorers of loaded ``changes`` no camera will run (each shared scorer once)."""
    for scorer in {id(c.scorer): c.scorer for c in changes if c.scorer is not None}.values():
        close_scorer(scorer)
