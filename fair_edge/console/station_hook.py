"""The console as one part of a station: ``StationConsole`` owns the feed, the actions and the server.

``run_station`` always makes one (the drift watch, bundle swaps and SIGHUP work without a browser)
and calls, by name: ``observe`` (a verdict callback), ``attach`` (once the inspector exists),
``tick`` (from the loop's ~0.5 s tick: drift alarm to the fault output) and ``close``. SIGHUP calls
``request_reload`` (signal-safe), which the reload thread (``watch_reloads``) turns into ``reload_bundle``. The web
server runs only when ``console.enabled``. A station of several cameras (``run_cell``) also calls
``attach_cell`` (its counters and each camera's bundle) and ``observe_part`` (a part row, from
``CellLine.on_part``); each of its cameras has its own drift watch, and any camera in alarm holds the
fault output, named. ``keep_flags`` (``fair-edge run``) hands in the command-line flags a reload applies over
the station file it re-reads (``ReloadFlags``), and ``keep_file_at_start`` the station file as it was loaded at the
start (before those flags), which a reload compares the re-read file with to name the edits it does not apply.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from fair_edge.console.actions import StationActions, StationLinks
from fair_edge.console.drift import Reference, alarm_reason
from fair_edge.console.feed import StationFeed
from fair_edge.console.refusals import StationStarting, StationStopping, SwapBusy
from fair_edge.console.reload_scope import CameraBundle, ReloadFrom, reload_plan, restart_words, unapplied_sections
from fair_edge.console.served_files import station_file_warning
from fair_edge.console.server import ConsoleServer, ConsoleStartError
from fair_edge.console.settings import RELOAD_JOIN_S, SWAP_JOIN_S
from fair_edge.errors import ConfigError, FairEdgeError

log = logging.getLogger(__name__)
DRIFT_EVERY_S = 2.0
RELOAD_POLL_S = 0.2   # how often the reload thread looks for a requested reload, s (a SIGHUP's latency)


@dataclass(frozen=True)
class ReloadFlags:
    """The command-line flags (``fair-edge run``) that override the station file, as a reload applies them over the
    file it re-reads; None: not given (the file's). bundle (--bundle): loaded instead of the file's ``bundle:`` (with
    several cameras: by every camera that names no bundle of its own). threshold (--threshold): instead of the
    file's ``decision.threshold`` (several cameras: for every camera that sets no threshold of its own), until an
    operator applies a threshold from the console (one camera): see ``StationConsole.reload_bundle``. backend
    (--backend) and roi (--roi): a reload loads with the backend and ROI the station started with whatever the file
    says now, so these stay in force anyway; they are only named in the reload's log line."""

    bundle: Path | None = None
    threshold: float | None = None
    backend: str | None = None
    roi: Path | None = None

    def words(self) -> list[str]:
        """The flags given that a reload does not read the file for, as the log names them ("--backend tensorrt")."""
        return [f"--{name} {value} (kept from the start)" for name, value in (("backend", self.backend),
                                                                               ("roi", self.roi)) if value is not None]


class StationConsole:
    """cfg: the StationConfig; bundle: the loaded Bundle, the one ``cfg.bundle`` names (a link: its target then; None:
    named by its folder). ``fault``: something with ``fault(active, reason)``
    for the drift alarm (or None). ``links``: what the console calls in the station and training rooms
    (``actions.StationLinks``). calibration: the ``Threshold`` of the station's decision score, whose
    distribution (with its size, ``n_normal``) feeds the drift watch and threshold tuning (``station.decision``: with an ROI, of
    max(map x ROI)); None = the bundle's threshold's, or none with an ROI (no distribution in its units).
    calibrations: several cameras: camera -> the ``Threshold`` of that camera's decision score (None: none), in
    the station file's order (``station.cell_models.CellModels.calibrations``); each camera gets its own drift watch
    on it, and ``calibration`` is not used."""

    def __init__(self, cfg, bundle, fault=None, links: StationLinks = StationLinks(), calibration=None,
                 calibrations: dict | None = None) -> None:
        if calibration is None and getattr(cfg, "roi", None) is None:
            calibration = bundle.threshold
        per_camera = None if calibrations is None else {camera: Reference.of(t) for camera, t in calibrations.items()}
        self.feed = StationFeed(cfg.console, cfg.output, Reference.of(calibration), camera_references=per_camera)
        # the bundle as the station named it (--bundle, bundle:; a link kept), loaded as bundle.root (links followed)
        self.feed.use_bundle(getattr(cfg, "bundle", None), bundle.root)
        self.actions = StationActions(self.feed, cfg.source_file, links)
        # camera ("" with one) -> the loaded bundle it starts with: its FP32 reference graph is recorded with the
        # model the camera's decider runs at ``attach`` (``actions.started_with``); several cameras: ``start_bundles``
        self.loaded_at_start: dict[str, object] = {"": bundle}
        self.fault = fault if cfg.console.drift_fault else None
        self._drift_checked = 0.0
        self._drift_alarmed: tuple[str, ...] = ()   # the cameras in alarm the fault output was last told of
        self.server = ConsoleServer(self.feed, self.actions) if cfg.console.enabled else None
        self.station_file = cfg.source_file
        # the station file as loaded at the start, before the command-line flags (``keep_file_at_start``: `fair-edge
        # run` hands it in; None: no reload names edits it does not apply)
        self.file_at_start = None
        record = getattr(cfg, "record", None)
        # what the console serves (/files/, /records/): a station file inside one is named by a warning at start
        self.served_folders = {"output folder": cfg.output, "record folder": getattr(record, "dir", None)}
        # the station's own threshold (file or command line); None = the bundle's. SIGHUP without a file keeps the
        # threshold in force when the station has its own or one was applied from the console since
        # (``actions.threshold_applied``), else reloads at the bundle's
        self.start_threshold = getattr(cfg, "threshold", None)
        self.flags = ReloadFlags()   # what a reload applies over the station file it re-reads (``keep_flags``)
        self._reload_wanted: str | None = None   # who asked for a reload not yet begun (``request_reload``)
        self._reloader: threading.Thread | None = None
        self._closed = threading.Event()

    def start(self) -> "StationConsole":
        """Start the web server (a warning names a station file inside a folder it serves: ``station_file_warning``).
        A server that cannot start is logged and the station inspects on without a console: a viewing tool never
        stops the line. For a port that cannot be bound (the ConfigError) the log asks first whether another station
        holds the port (the usual cause: the service still running while a `fair-edge run` is started by hand); any
        other cause (``ConsoleStartError``: out of file descriptors, no thread) is named as it is, with no word of
        the port."""
        if self.server is not None:
            try:
                self.server.start()
            except ConsoleStartError as exc:
                log.error("console not served: %s; the station inspects on without it", exc)
                self.server = None
                return self
            except ConfigError as exc:
                port = self.server.settings.port
                log.error("console not served: port %s on %s cannot be bound. Is another station already running on "
                          "this port (`ss -ltnp 'sport = :%s'` names its pid; `systemctl status PID` its unit when "
                          "it runs as one, or a `fair-edge run` in another terminal)? Stop that one first; if another "
                          "program holds the port: %s", port, self.server.settings.host, port, exc)
                self.server = None
                return self
            exposed = station_file_warning(self.station_file, self.served_folders)
            if exposed:
                log.warning("%s", exposed)
        return self

    def keep_flags(self, flags: ReloadFlags) -> None:
        """Keep the command-line flags that override the station file in force across reloads (``ReloadFlags``):
        ``fair-edge run`` applied them once, over the file as it read it at the start."""
        self.flags = flags

    def keep_file_at_start(self, file_at_start) -> None:
        """The station file as it was loaded at the start (a StationConfig: before the command-line flags, which a
        restart with the same command applies again; several cameras: the whole file, every camera): what a reload
        compares the re-read file with, to name the sections edited since that it does not apply
        (``_warn_unapplied``)."""
        self.file_at_start = file_at_start

    @property
    def url(self) -> str:
        return self.server.url if self.server is not None else ""

    def request_reload(self, who: str = "SIGHUP") -> None:
        """Ask the reload thread (``watch_reloads``) for ``reload_bundle(who)`` and return at once: what a signal
        handler calls. It only sets an attribute (no lock, no I/O, nothing that raises), so what the reload meets (a
        station file that cannot be read, a damaged bundle) is logged on that thread and never surfaces in the
        inspection loop the signal interrupted. Requests made before a reload starts are that one reload; one made
        while a reload or a bundle swap is in progress is one more reload after it (the station file as it is
        then), never two at once."""
        self._reload_wanted = who

    def watch_reloads(self) -> None:
        """Start the reload thread that serves ``request_reload`` (once; from the main program, not from a
        signal handler); it ends at ``close``. A thread the OS refuses (RuntimeError "can't start new thread": ulimit
        -u, TasksMax) is raised as it is, and ``close`` then has no thread to wait for (kept only once started: a
        thread never started cannot be joined, and that error hid the limit's)."""
        if self._reloader is None:
            reloader = threading.Thread(target=self._serve_reloads, name="station-reload", daemon=True)
            reloader.start()
            self._reloader = reloader

    def _serve_reloads(self) -> None:
        """The reload thread: every RELOAD_POLL_S, a requested reload once no swap is loading (one at a time)."""
        while not self._closed.wait(RELOAD_POLL_S):
            if self._reload_wanted is None or self.actions.swap_status.get("state") == "loading":
                continue
            # a request landing between these two steps is served by this reload: it reads the file after them
            who, self._reload_wanted = self._reload_wanted, None
            self.reload_bundle(who)

    def reload_bundle(self, who: str = "SIGHUP") -> None:
        """Swap to the bundle, threshold and ``regions:`` (rules, zones, scale) the station file names now (re-read: a
        threshold applied from the console and written there is kept; the regions go with the bundle, each change
        logged), with the command-line flags (``keep_flags``) over it as at the start, named in one log line: --bundle
        instead of the file's bundle, --threshold instead of its threshold, until an operator applies a threshold from
        the console: that one is written to the file, and the flag's hold on the threshold ends with the apply (the
        next reloads take the file's threshold, a hand edit made since included). The console writes a threshold
        with the bundle it was applied on where the file names another (a bundle swapped in from the console), and
        a reload that would load the file's threshold, as last applied from the console (``audit.jsonl``, naming the
        model), with a bundle holding another model (a hand edit of ``bundle:``, --bundle, the folder rebuilt with
        another model) is refused (``check_threshold_pairs``; the start makes the same check). Without a
        station file: reload the bundle in force by the path it was named by (``_reload_in_force``: a folder rebuilt in
        place, a link such as ``bundles/current`` re-pointed since: its target now), regions kept, at the threshold in
        force when the station has its own (--threshold, or one applied since), else at the bundle's; one applied from
        the console on another model than the folder holds now is refused the same way. Several cameras: every
        camera's bundle, threshold and regions as the file names them now (its own, else the station's or the flag's),
        each camera switching through its own decider; a threshold applied to a camera is written as its own, which
        the flag does not override. Reads the station file in the calling thread, then returns; the load runs in a
        thread. The file is read and the swap
        started under ``actions.lock``, and no threshold is applied while it loads: a threshold applied from the
        console is either in the file this reads or refused until the reloaded bundle runs. A bundle swap
        loading already (the console's, started first) puts the reload back as requested (``request_reload``):
        it runs once that swap is done, with the station file as it is then. Raises nothing: whatever else stops
        the reload is logged as "bundle reload refused (WHO): ..." and the station goes on with what it runs; the swap
        status (``/api/swap``, the live page) says the same, "failed" (``actions.reload_refused``), as it does for a
        reload whose bundle fails to load, naming the camera and the station file's field (a signal handler calls
        ``request_reload`` instead: this reads a file)."""
        try:
            with self.actions.lock:
                self._reload(who)
        except SwapBusy as exc:   # a swap loads: this reload follows it (the reload thread waits for the swap)
            self._reload_wanted = self._reload_wanted or who
            log.warning("bundle reload (%s) waits for the swap in progress: %s", who, exc)
        except StationStopping as exc:   # asked for as the station stops (``close``): nothing to reload into
            log.warning("bundle reload (%s) not started: %s", who, exc)
        except Exception as exc:  # noqa: BLE001 - a reload never stops the station (see the docstring)
            text = str(exc) if isinstance(exc, FairEdgeError) else f"{type(exc).__name__}: {exc}"
            log.error("bundle reload refused (%s): %s", who, text, exc_info=not isinstance(exc, FairEdgeError))
            self.actions.reload_refused(who, text)

    def _reload(self, who: str) -> None:
        """``reload_bundle``'s read of the station file and start of the swap (the caller holds ``actions.lock``)."""
        if self.feed.cell is not None:   # every camera's own bundle and threshold: nothing more to swap
            self._warn_unapplied(who)
            self._reload_cameras(who)
            return
        if self.station_file is None:   # the bundle in force as named (a link: its target now), regions kept
            self._reload_in_force(who)
            return
        now = self._read_station_file()   # a regions: section that does not load refuses the reload
        self._warn_unapplied(who, now)
        threshold, threshold_words = self._threshold_over(now.threshold)
        path = self.flags.bundle or now.bundle or self.feed.bundle_in_force()
        bundle_words = [] if self.flags.bundle is None else [
            f"--bundle {self.flags.bundle} over the station file's {now.bundle or '(none)'}"]
        self._log_flags(who, bundle_words + threshold_words)
        named = CameraBundle("", Path(path), False, threshold)
        self.actions.check_threshold_pairs([named])
        self.actions.swap(str(path), who, threshold=threshold, regions=now.regions,
                          reload=ReloadFrom(who, (named,), self.station_file, self.flags.bundle))

    def _reload_in_force(self, who: str) -> None:
        """One camera without a station file: load the bundle in force again by the path it was named by
        (``feed.bundle_in_force``: --bundle, or the path a console swap was given), so a folder rebuilt in place is
        reloaded and a link (``bundles/current``) leads to its target now, not the one it had at the start; at the
        threshold in force when the station has its own (--threshold, or one applied from the console since), else at
        the bundle's. A threshold applied from the console in force, and the folder holding another model now, is
        refused (``actions.check_threshold_pairs``): nothing is loaded."""
        given = self.start_threshold is not None or self.actions.threshold_applied
        kept = threshold_in_force(self._inspector()) if given else None
        path = self.feed.bundle_in_force()
        in_force = CameraBundle("", path, False, kept)
        self.actions.check_threshold_pairs([in_force])
        self.actions.swap(str(path), who, threshold=kept, reload=ReloadFrom(who, (in_force,)))

    def _warn_unapplied(self, who: str, now=None) -> None:
        """Log a WARNING naming the station file's sections edited since the start (``file_at_start``) that a
        reload does not apply (``reload_scope.unapplied_sections``: output, console, metrics, cameras, reject, ...),
        and the restart that applies them (``systemctl restart UNIT`` under systemd). now: the file as the reload
        read it (None: read here; a file that does not load is the reload's to refuse, not named here)."""
        now = self._file_now() if now is None else now
        if now is None or self.file_at_start is None:   # no file now, or none that loaded at the start: no edits
            return
        sections = unapplied_sections(self.file_at_start, now)
        if sections:
            log.warning("reload (%s): %s in %s not applied (edited since the station started; a reload "
                        "applies bundle, decision.threshold and regions: only): restart the station to apply them "
                        "(%s)", who, ", ".join(sections), self.station_file, restart_words())

    def _file_now(self):
        """The station file as it reads now (a StationConfig: the whole file, every camera, no command-line flag
        applied); None without a station file or loader, or when it does not load (a reload refuses it then)."""
        load_station = self.actions.links.load_station
        if self.station_file is None or load_station is None:
            return None
        try:
            return load_station(self.station_file)
        except ConfigError:
            return None

    def _read_station_file(self):
        """The station file's settings now (``StationLinks.load_station``: ConfigError for one that does not load)."""
        load_station = self.actions.links.load_station
        if load_station is None:
            raise ConfigError(f"cannot re-read the station file {self.station_file} (no station loader was given)")
        return load_station(self.station_file)

    def _threshold_over(self, file_threshold: float | None) -> tuple[float | None, list[str]]:
        """One camera: the threshold a reload runs with (None: the bundle's) and the log's words on --threshold. The
        flag's, over ``file_threshold`` (the file's ``decision.threshold`` now), until an operator applies a
        threshold from the console (``actions.threshold_applied``; it is written to the file): from then on the flag
        no longer overrides the file's threshold, this reload and the later ones, so a hand edit of the file made
        after that apply is taken too."""
        flag = self.flags.threshold
        if flag is None:
            return file_threshold, []
        if self.actions.threshold_applied:
            self.flags = replace(self.flags, threshold=None)
            if file_threshold is not None and file_threshold == threshold_in_force(self._inspector()):
                return file_threshold, [f"--threshold {flag:.6g} no longer: the station file's {file_threshold:.6g}, "
                                        "applied from the console, is in force and kept"]
            return file_threshold, [f"--threshold {flag:.6g} no longer: a threshold was applied from the console "
                                    f"since the start, so the station file's {_threshold_text(file_threshold)} "
                                    "is taken"]
        return flag, [f"--threshold {flag:.6g} over the station file's {_threshold_text(file_threshold)}"]

    def _reload_cameras(self, who: str) -> None:
        """Several cameras: ``actions.reload_cameras``, with --bundle for each camera that names no bundle of its own
        and --threshold for each that sets no threshold of its own in the station file now."""
        if self.station_file is None or (self.flags.bundle is None and self.flags.threshold is None):
            if self.station_file is not None:
                self._log_flags(who, [])
            self.actions.reload_cameras(who)
            return
        camera_bundles = self.actions.links.camera_bundles
        if camera_bundles is None:
            raise ConfigError("this station cannot tell which bundle each camera runs (no loader was given)")
        # --bundle over the file's bundle: as at the start (a file with none reloads). ConfigError: other cameras
        named = camera_bundles(self.station_file, bundle=self.flags.bundle)
        own_threshold = {view.name: view.threshold is not None for view in self._read_station_file().cameras}
        if set(own_threshold) != {c.camera for c in named}:
            raise ConfigError(f"{self.station_file}: its cameras changed while the reload read it (expected "
                              f"{', '.join(c.camera for c in named)}, found {', '.join(own_threshold) or 'none'}); "
                              "send the reload again")
        flagged = [flags_over_camera(c, self.flags, own_threshold[c.camera]) for c in named]
        self._log_flags(who, camera_flag_words(self.flags, named, own_threshold))
        self.actions.check_threshold_pairs(flagged)
        self.actions.swap_cameras(reload_plan(flagged), who, {c.camera: c.threshold for c in flagged},
                                  {c.camera: c.regions for c in flagged if c.regions is not None},
                                  ReloadFrom(who, tuple(flagged), self.station_file, self.flags.bundle))

    def _inspector(self):
        """The inspector (one camera: what decides, ``threshold_in_force``); StationStarting before ``attach``."""
        if self.feed.inspector is None:
            raise StationStarting("the station is still starting (no inspector yet); reload again in a moment")
        return self.feed.inspector

    def _log_flags(self, who: str, words: list[str]) -> None:
        """One log line naming the command-line flags that still override the station file (none given: no line)."""
        words = words + self.flags.words()
        if words:
            log.warning("bundle reload (%s): flags given on the command line: %s", who, "; ".join(words))

    def observe(self, frame, verdict, anomaly_map) -> None:
        self.feed.observe(frame, verdict, anomaly_map)
        self.actions.observe(verdict)

    def start_bundles(self, bundles: dict) -> None:
        """Several cameras: camera -> the loaded bundle (``Bundle`` or ``FusedBundle``) it starts with, before
        ``attach`` (which records each camera's model and map from it: ``actions.started_with``)."""
        self.loaded_at_start = dict(bundles)

    def attach(self, inspector, capture, scheduler, recorder, camera_watch) -> None:
        """The station's inspector and line parts; the model each camera starts with is recorded with the map of the
        bundle it was loaded from (``_record_start_maps``)."""
        self.feed.attach(inspector, capture, scheduler, recorder, camera_watch, self.feed.bundle_path)
        self._record_start_maps(inspector)

    def _record_start_maps(self, inspector) -> None:
        """Record, for each camera's decider (several: ``inspector.views``; one: the inspector, camera ""), the model it
        runs now with the bundle it was loaded from (``loaded_at_start``): what a console swap under region rules is
        compared with (``actions.started_with``; the folder is not read again then, it may have been rebuilt)."""
        views = getattr(inspector, "views", None) or {"": inspector}
        for camera, decider in views.items():
            bundle = self.loaded_at_start.get(camera)
            if bundle is not None and decider is not None:
                self.actions.started_with(camera, str(getattr(decider, "model", "") or ""), bundle)

    def attach_cell(self, counters, bundles) -> None:
        """Several cameras: their counters (``feed.CellCounters``) and camera -> the bundle it runs, in the
        station file's order (each camera's scores feed its own drift watch)."""
        self.feed.attach_cell(counters, bundles)

    def observe_part(self, verdict, row: dict) -> None:
        """A part row of several cameras' views (``station.parts.PartListener``): the live page's latest part
        and the gallery's NG parts, whose views' verdicts stay reviewable while it lists them. verdict: the part's
        verdict for the gate (unused: the row has it all)."""
        self.feed.observe_part(row)
        self.actions.observe_part(row)

    def tick(self, _inspector=None) -> None:
        """Raise / clear the fault output on a drift alarm (when console.drift_fault), every 2 s at most: held
        while any camera is in alarm, its reason naming them (``drift.alarm_reason``); told again when the
        cameras in alarm change, not when only their PSI moves."""
        if self.fault is None or time.monotonic() - self._drift_checked < DRIFT_EVERY_S:
            return
        self._drift_checked = time.monotonic()
        alarms = self.feed.drift.alarms()
        if tuple(alarms) == self._drift_alarmed:
            return
        self._drift_alarmed = tuple(alarms)
        reason = alarm_reason(alarms)
        if reason:
            log.error("drift alarm: %s", reason.removeprefix("drift: "))
        else:
            log.warning("drift alarm cleared")
        self.fault.fault(bool(alarms), reason)

    def drift_metrics(self) -> dict[str, float]:
        """For Metrics.watch: fair_edge_drift_psi (no sample while there is no value), fair_edge_drift_alarm and
        fair_edge_drift_parts, of the combined state (several cameras: the worst camera's)."""
        return _drift_values(self.feed.drift.state())

    def camera_drift_metrics(self) -> dict[str, dict[str, float]]:
        """For Metrics.watch_by, several cameras: camera -> each camera's own drift values (as ``drift_metrics``)."""
        return {camera: _drift_values(state) for camera, state in self.feed.drift.states().items()}

    def close(self) -> None:
        """Stop the reload thread (waiting up to RELOAD_JOIN_S for a reload in progress to start its swap), the swap
        thread (waiting up to SWAP_JOIN_S for a bundle loading; one loading still switches no camera, and no swap
        starts after this: ``StationActions.close``) and the web server."""
        self._closed.set()
        self.actions.refuse_swaps()   # first: a reload that starts its swap from now on is refused
        if self._reloader is not None:
            self._reloader.join(RELOAD_JOIN_S)
        self.actions.close(SWAP_JOIN_S)
        if self.server is not None:
            self.server.close()

    def __enter__(self) -> "StationConsole":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _drift_values(state) -> dict[str, float]:
    """A ``DriftState`` as metric values: psi, left out while there is none (fewer parts than
    ``console.drift_min_parts``, or just after a swap: the gauge then has no sample, so an alert or a ``max()`` /
    ``avg()`` over cameras reads no value rather than a -1 that is no PSI), alarm (0 / 1), parts."""
    values = {"alarm": int(state.alarm), "parts": state.parts}
    if state.psi is not None:
        values["psi"] = state.psi
    return values


def threshold_in_force(decider) -> float:
    """The threshold ``decider`` (an inspector, or a camera's ``ViewDecider``) decides with, or will from its next
    batch: the one its switch holds for it (an apply or a swap not yet taken), else its own."""
    pending = decider.switch.pending
    return pending.threshold if pending is not None and pending.threshold is not None else decider.threshold


def flags_over_camera(named: CameraBundle, flags: ReloadFlags, own_threshold: bool) -> CameraBundle:
    """One camera of several as a reload loads it: ``named`` (its bundle and threshold as the station file names them
    now, --bundle already standing for the file's: ``CellLoader.camera_bundles(bundle=)``) with --threshold when it
    sets no threshold of its own (``own_threshold``: its ``cameras[].threshold`` is set; the console writes an
    applied threshold there)."""
    threshold = flags.threshold if flags.threshold is not None and not own_threshold else named.threshold
    return replace(named, threshold=threshold)


def camera_flag_words(flags: ReloadFlags, named, own_threshold: dict[str, bool]) -> list[str]:
    """The log's words on --bundle / --threshold in a reload of several cameras: each flag given, over the station
    file's values, and the cameras it applies to (those naming no bundle / threshold of their own)."""
    words = []
    if flags.bundle is not None:
        cameras = ", ".join(c.camera for c in named if not c.own) or "none (each names its own)"
        words.append(f"--bundle {flags.bundle} over the station file's, for cameras {cameras}")
    if flags.threshold is not None:
        cameras = ", ".join(c.camera for c in named if not own_threshold[c.camera]) or "none (each sets its own)"
        words.append(f"--threshold {flags.threshold:.6g} over the station file's, for cameras {cameras}")
    return words


def _threshold_text(threshold: float | None) -> str:
    """A station file's threshold for the log: the value, or what None means."""
    return "(none: the bundle's)" if threshold is None else f"{threshold:.6g}"

