"""The names of the tensors that cross the model boundary, defined once.

Every family's graph takes some of the inputs below and returns both outputs; export, calibration,
the runtime backends and the station address tensors only by these names.
  colour      (B, 3, S, S) float32 RGB in [0, 1]: the resized frame (``preprocess.frames_to_batch``)
  highpass    (B, C, S, S) float32: gray -> high-pass of ``colour`` (``preprocess.model_input``)
  anomaly_map (B, 1, S, S) float32: per-pixel anomaly, larger = more anomalous (score units)
  score       (B,) float32: image anomaly score; a part is NG when score > threshold
"""

from __future__ import annotations

from dataclasses import dataclass

from fair_edge.preprocess import COLOUR, HIGHPASS  # noqa: F401 - re-exported: defined with the code that makes them
ANOMALY_MAP = "anomaly_map"
SCORE = "score"
OUTPUT_NAMES = (ANOMALY_MAP, SCORE)
BATCH_DIM = "batch"  # the name of the dynamic batch axis in exported graphs


@dataclass(frozen=True)
class TensorSpec:
    """One graph input: ``name`` with shape (batch, channels, size, size), float32, and what makes it."""

    name: str
    channels: int
    size: int
    made_by: str

    def shape(self, batch: int | str = BATCH_DIM) -> tuple[int | str, int, int, int]:
        return (batch, self.channels, self.size, self.size)

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape()), "dtype": "float32", "made_by": self.made_by}
