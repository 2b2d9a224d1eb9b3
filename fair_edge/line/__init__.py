"""The line side of a station: reject scheduling, signal sinks, recording and metrics.

What the inspection loop calls (see docs/line-integration.md)::

    scheduler = RejectScheduler(RejectSettings.from_dict(cfg["reject"]), encoder=None)
    recorder = Recorder(RecordSettings.from_dict(cfg["record"]))
    metrics = Metrics(MetricsSettings.from_dict(cfg["metrics"])).start()
    metrics.watch("reject", scheduler.stats); metrics.watch("recorder", recorder.stats)

    scheduler.note_capture(frame.seq)            # camera thread, only with an encoder
    scheduler.submit(verdict)                    # never blocks on I/O
    recorder.record(frame, verdict, anomaly_map) # never blocks; drops are counted
    metrics.observe(verdict)
    scheduler.fault(True, "camera gone")         # station cannot inspect
"""

from .encoder_source import EncoderSource, FakeEncoder
from .events import RejectEvent
from .metrics import Metrics
from .recorder import Recorder
from .scheduler import RejectScheduler
from .settings import MetricsSettings, RecordSettings, RejectSettings
from .sinks import FanOut, SignalSink, open_fanout, open_sink

__all__ = ["EncoderSource", "FakeEncoder", "FanOut", "Metrics", "MetricsSettings", "Recorder",
           "RecordSettings", "RejectEvent", "RejectScheduler", "RejectSettings", "SignalSink",
           "open_fanout", "open_sink"]
