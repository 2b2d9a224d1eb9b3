"""The console's refusals: the errors an action answers with when it changes nothing. Each is a ConfigError (the API
answers 400) unless its class says otherwise: ``StationStarting`` is 503 (try again shortly) and a ``Conflict``, a
refusal for the state the action met rather than for its input, is 409 (``app._run``)."""

from __future__ import annotations

from fair_edge.errors import ConfigError


class StationStarting(ConfigError):
    """Asked before the station attached its inspector (the console serves while the station starts): nothing
    changed; the API answers 503 so a page tries again."""


class SwapBusy(ConfigError):
    """A swap (or a reload) asked for while a bundle is loading: nothing changed. The console answers 400; a
    SIGHUP reload waits and runs once the swap in progress is done (``StationConsole.reload_bundle``)."""


class StationStopping(ConfigError):
    """A swap (or a reload) asked for once the station is stopping (``StationActions.close``): nothing is loaded."""


class ThresholdNotForBundle(ConfigError):
    """A reload refused: the station file's threshold was applied from the console on another model than the one the
    bundle folder the reload would load holds now (``StationActions.check_threshold_pairs``: another folder, or the
    same one rebuilt); the station runs on with what it runs."""


class Conflict(ConfigError):
    """A change refused for the state it met, not for its input: nothing changed; the API answers 409."""


class AlarmChanged(Conflict):
    """An acknowledgement of an alarm the operator was shown while another one, raised since, is latched: nothing
    was cleared; the API answers 409 so the page shows the new alarm first."""


class FrameNotKept(Conflict):
    """A review of a view whose frame has left the console's memory (``console.keep_frames``) and whose NG image is
    not recorded: its image cannot be saved, so nothing is recorded (a review without its image is dropped by the
    dataset export); the API answers 409."""


class RulesDecide(Conflict):
    """A threshold applied to a camera whose region rules decide the verdict (``regions:`` with a rule that can fire,
    ``RegionJudge.decides``): a part is NG exactly when a rule fires, whatever its score, so the threshold would
    change no verdict; nothing changed (``rules_decide_note`` says what to tune instead); the API answers 409."""
