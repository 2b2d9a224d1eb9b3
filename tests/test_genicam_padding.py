"""The harvesters GenICam reader reads a frame's rows by their stride: a camera that pads each line gives its frames
unsheared, and a buffer whose size fits no row layout is a CameraError naming the sizes, never a garbled frame.

Before, ``GenICamSource`` reshaped the component's data to (height, width): a padded buffer (more bytes than
width x height x channels) failed with numpy's reshape error, and a harvesters that hands out only the first
width x height x channels bytes gave frames whose rows after the first start early (sheared)."""

from __future__ import annotations

import types

import numpy as np
import pytest

from fair_edge.cameras import genicam
from fair_edge.cameras.genicam import GenICamSource
from fair_edge.errors import CameraError

PAD = 0xEE   # the padding bytes' value: one in a frame means rows were read at the wrong place


class FakeComponent:
    """A harvesters 2D image component: ``data`` is the buffer's bytes as a flat uint8 array, each of the image's
    rows followed by ``row_pad`` bytes, then ``tail`` bytes; only the first ``kept`` bytes when given (a harvesters
    that hands out width x height x channels bytes of a padded buffer). ``x_padding`` (bytes per row) is what the
    producer reports: None = the attribute is missing (an older harvesters)."""

    def __init__(self, image: np.ndarray, fmt: str, *, row_pad: int = 0, x_padding: int | None = None,
                 tail: int = 0, kept: int | None = None) -> None:
        rows = image.reshape(image.shape[0], -1)
        padded = np.concatenate([rows, np.full((rows.shape[0], row_pad), PAD, np.uint8)], axis=1)
        self.data = np.concatenate([padded.reshape(-1), np.full(tail, PAD, np.uint8)])[:kept]
        self.height, self.width, self.data_format = image.shape[0], image.shape[1], fmt
        if x_padding is not None:
            self.x_padding, self.y_padding = x_padding, 0


class FakeBuffer:
    def __init__(self, component: FakeComponent) -> None:
        self.payload = type("Payload", (), {"components": [component]})()

    def __enter__(self) -> FakeBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class FakeNodeMap:
    """A camera's GenApi node map as far as GenICamSource reads it: ``features`` name -> value (no TriggerMode: a
    camera that runs free); the names in ``unavailable`` are nodes its XML declares not available (GenApi access
    mode NA): ``has_node`` finds them, reading their value raises as GenApi's AccessException does."""

    def __init__(self, features: dict[str, str] | None = None, unavailable: tuple[str, ...] = ()) -> None:
        self.features, self.unavailable = features or {}, unavailable

    def has_node(self, name: str) -> bool:
        return name in self.features or name in self.unavailable

    def get_node(self, name: str) -> FakeNode:
        return FakeNode(self.features.get(name), name not in self.unavailable)


class FakeNode:
    """A GenApi node: its ``value``, read only when its access mode (``get_access_mode``) is RW (4), not NA (1)."""

    def __init__(self, value: str | None, available: bool) -> None:
        self._value, self._access_mode = value, 4 if available else 1

    def get_access_mode(self) -> int:
        return self._access_mode

    @property
    def value(self) -> str:
        if self._access_mode != 4:
            raise RuntimeError("Node is not readable. : AccessException thrown in node while calling GetIntValue()")
        return self._value


class GenTLTimeout(Exception):
    """GenTL's ``TimeoutException`` (genicam.gentl), which harvesters' ``fetch`` raises when no buffer came in time."""


class GenTLInvalidAddress(Exception):
    """GenTL's ``InvalidAddressException`` (genicam.gentl): the camera refused a register read's address."""


class FakeAcquirer:
    def __init__(self, components: list[FakeComponent]) -> None:
        self.components = components
        self.remote_device = types.SimpleNamespace(node_map=FakeNodeMap())

    def fetch(self, timeout: float) -> FakeBuffer:
        return FakeBuffer(self.components.pop(0))

    def start(self) -> None: pass

    def stop(self) -> None: pass

    def destroy(self) -> None: pass


def open_with(components: list[FakeComponent], tmp_path, monkeypatch) -> GenICamSource:
    """A GenICamSource opened on a fake harvesters whose camera hands out ``components`` in turn."""
    class FakeHarvester:
        device_info_list = [object()]

        def add_file(self, path: str) -> None: pass

        def update(self) -> None: pass

        def create(self, key) -> FakeAcquirer:
            return FakeAcquirer(components)

        def reset(self) -> None: pass

    monkeypatch.setattr(genicam, "_import_harvester",
                        lambda cti: (FakeHarvester, GenTLTimeout, (GenTLInvalidAddress,)))
    cti = tmp_path / "Producer.cti"
    cti.write_bytes(b"")
    source = GenICamSource(cti, serial="FE01")
    source.open()
    return source


def gradient(height: int, width: int, channels: int = 1) -> np.ndarray:
    """A (height, width[, channels]) uint8 image with no 0xEE pixel, every pixel different along a row."""
    values = (np.arange(height * width * channels) % 200).astype(np.uint8)
    return values.reshape((height, width, channels) if channels > 1 else (height, width))


@pytest.mark.parametrize("x_padding", [3, None], ids=["reported", "from-size"])
def test_padded_mono_rows_give_the_unsheared_frame(x_padding, tmp_path, monkeypatch):
    """Rows of 6 pixels followed by 3 padding bytes: the frame is the 6 pixels of each row, whether the producer
    reports the padding (x_padding) or it is read from the buffer's size (5 rows of 9 bytes)."""
    image = gradient(5, 6)
    source = open_with([FakeComponent(image, "Mono8", row_pad=3, x_padding=x_padding)], tmp_path, monkeypatch)
    frame = source.read()
    source.close()
    assert frame.image.shape == (5, 6) and np.array_equal(frame.image, image)


def test_padded_rgb_rows_give_the_unsheared_bgr_frame(tmp_path, monkeypatch):
    image = gradient(4, 5, 3)
    source = open_with([FakeComponent(image, "RGB8", row_pad=2, x_padding=2)], tmp_path, monkeypatch)
    frame = source.read()
    source.close()
    assert np.array_equal(frame.image, image[:, :, ::-1])


def test_packed_rows_read_as_before(tmp_path, monkeypatch):
    image = gradient(3, 4)
    source = open_with([FakeComponent(image, "Mono8", x_padding=0), FakeComponent(image, "Mono8")], tmp_path,
                       monkeypatch)
    frames = [source.read(), source.read()]
    source.close()
    assert all(np.array_equal(f.image, image) for f in frames)


def test_a_buffer_of_no_row_layout_is_refused_naming_its_sizes(tmp_path, monkeypatch):
    """5 rows of 6 pixels and 7 extra bytes at the end (37 bytes): neither packed (30) nor 5 equal rows, and no
    padding reported: the bytes do not say where each row starts. A CameraError naming the frame's size and the
    packed image's, not a frame (before: numpy's "cannot reshape" text)."""
    image = gradient(5, 6)
    with pytest.raises(CameraError) as info:
        open_with([FakeComponent(image, "Mono8", tail=7, x_padding=0)], tmp_path, monkeypatch)
    message = str(info.value)
    assert "genicam:FE01" in message and "37 bytes" in message and "5 rows x 6 bytes = 30" in message


def test_reported_padding_with_too_little_data_is_refused(tmp_path, monkeypatch):
    """A producer that reports 4 padding bytes per row, and a harvesters that hands out only the buffer's first
    width x height bytes (30 of 50): a CameraError naming the bytes expected and found, not a sheared frame
    (before: rows 2 to 5 started 4, 8, 12 and 16 bytes early, padding bytes among their pixels)."""
    image = gradient(5, 6)
    with pytest.raises(CameraError, match=r"frame data is 30 bytes, expected at least 46"):
        open_with([FakeComponent(image, "Mono8", row_pad=4, x_padding=4, kept=30)], tmp_path, monkeypatch)
