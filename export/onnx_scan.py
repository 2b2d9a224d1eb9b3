"""What ``load_bundle`` checks in an ONNX graph, read from its protobuf wire format without loading the weights.

``scan_graph(path)`` -> ``GraphFacts``: the graph's inputs (name, element type, dims), its output names, and the
external-data files its tensors name (``TensorProto.data_location`` EXTERNAL / ``external_data`` "location": ONNX
Runtime and OpenVINO read those files beside the graph, so a bundle must checksum them). The file is memory-mapped
and walked field by field; the weights' bytes are skipped, never copied: an 800 MB graph scans in milliseconds at a
few MB of memory, where ``onnx.load(..., load_external_data=False)`` took 0.8 s and 1.6 GB (measured, onnx 1.23).
Tensors are found wherever ONNX keeps them: graph initializers (dense and sparse), node attributes (t, tensors,
sparse_tensor(s)), subgraphs of If/Loop/Scan (g, graphs), model-local functions and training-info graphs.
Field numbers are onnx.proto's (tests/test_bundle_checks.py checks them against onnx's descriptors).
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

# onnx.proto field numbers
MODEL_GRAPH, MODEL_TRAINING_INFO, MODEL_FUNCTIONS = 7, 20, 25
TRAINING_GRAPHS = (1, 2)   # TrainingInfoProto.initialization, .algorithm
FUNCTION_NODE = 7
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_SPARSE_INITIALIZER, GRAPH_INPUT, GRAPH_OUTPUT = 1, 5, 15, 11, 12
NODE_ATTRIBUTE = 5
ATTR_TENSORS, ATTR_SPARSE, ATTR_GRAPHS = (5, 10), (22, 23), (6, 11)   # t/tensors, sparse_tensor(s), g/graphs
SPARSE_TENSORS = (1, 2)   # SparseTensorProto.values, .indices
TENSOR_NAME, TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION = 8, 13, 14
EXTERNAL = 1   # TensorProto.DataLocation.EXTERNAL
ENTRY_KEY, ENTRY_VALUE = 1, 2
VALUE_NAME, VALUE_TYPE, TYPE_TENSOR, TENSOR_ELEM_TYPE, TENSOR_SHAPE, SHAPE_DIM, DIM_VALUE, DIM_PARAM = 1, 2, 1, 1, 2, 1, 1, 2
FLOAT = 1   # TensorProto.DataType.FLOAT
LENGTH_DELIMITED = 2


class GraphFormatError(ValueError):
    """The file is not a readable ONNX protobuf (truncated, or not ONNX at all)."""


@dataclass(frozen=True)
class GraphInput:
    """One graph input: name, element type (onnx.TensorProto.DataType; 1 = float32, 0 = not stated) and dims, each
    an int (fixed), a str (symbolic, e.g. 'batch') or None (unknown); dims None when the graph states no shape."""

    name: str
    elem_type: int
    dims: tuple[int | str | None, ...] | None


@dataclass(frozen=True)
class GraphFacts:
    """inputs: the graph's inputs other than initializers, in order; outputs: its output names, in order;
    external_files: the "location" of every externally stored tensor, as written (relative to the graph's folder;
    '' when a tensor is marked external without one), each once, in order of appearance."""

    inputs: tuple[GraphInput, ...]
    outputs: tuple[str, ...]
    external_files: tuple[str, ...]


def scan_graph(path: str | Path) -> GraphFacts:
    """The ``GraphFacts`` of the ONNX file ``path``. GraphFormatError when it is not a readable ONNX protobuf;
    OSError when it cannot be read."""
    with open(path, "rb") as fh:
        if fh.seek(0, 2) == 0:
            raise GraphFormatError("the file is empty")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            buf = memoryview(mapped)
            try:
                return _scan_model(buf)
            except (IndexError, RecursionError) as exc:
                raise GraphFormatError(f"damaged protobuf ({type(exc).__name__})") from exc
            finally:
                buf.release()


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise GraphFormatError(f"varint longer than 10 bytes at byte {pos}")


def _fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value or start, end) of each field of the message at buf[start:end]: a varint's
    value (end 0), a length-delimited field's byte span; fixed-size fields are skipped."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, wire, value, 0
        elif wire == LENGTH_DELIMITED:
            size, pos = _varint(buf, pos)
            if pos + size > end:
                raise GraphFormatError(f"field {number} at byte {pos} runs past its message's end")
            yield number, wire, pos, pos + size
            pos += size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise GraphFormatError(f"wire type {wire} of field {number} at byte {pos}")
    if pos != end:
        raise GraphFormatError(f"a message ends at byte {pos}, past its length ({end})")


def _messages(buf: memoryview, start: int, end: int, numbers: tuple[int, ...]) -> Iterator[tuple[int, int, int]]:
    """(field number, start, end) of each length-delimited field numbered in ``numbers``."""
    for number, wire, a, b in _fields(buf, start, end):
        if number in numbers and wire == LENGTH_DELIMITED:
            yield number, a, b


def _text(buf: memoryview, start: int, end: int) -> str:
    return bytes(buf[start:end]).decode("utf-8", "replace")


def _scan_model(buf: memoryview) -> GraphFacts:
    inputs: tuple[GraphInput, ...] = ()
    outputs: tuple[str, ...] = ()
    external: dict[str, None] = {}
    found_graph = False
    for number, a, b in _messages(buf, 0, len(buf), (MODEL_GRAPH, MODEL_TRAINING_INFO, MODEL_FUNCTIONS)):
        if number == MODEL_GRAPH:
            found_graph = True
            inputs, outputs = _graph_io(buf, a, b)
            _graph_tensors(buf, a, b, external)
        elif number == MODEL_TRAINING_INFO:
            for _, ga, gb in _messages(buf, a, b, TRAINING_GRAPHS):
                _graph_tensors(buf, ga, gb, external)
        else:
            for _, na, nb in _messages(buf, a, b, (FUNCTION_NODE,)):
                _node_tensors(buf, na, nb, external)
    if not found_graph:
        raise GraphFormatError("no graph (ModelProto.graph) in the file")
    return GraphFacts(inputs, outputs, tuple(external))


def _graph_io(buf: memoryview, start: int, end: int) -> tuple[tuple[GraphInput, ...], tuple[str, ...]]:
    """The main graph's inputs (initializers listed as inputs, as old IR versions do, left out) and output names."""
    declared, outputs, initializers = [], [], set()
    for number, a, b in _messages(buf, start, end, (GRAPH_INPUT, GRAPH_OUTPUT, GRAPH_INITIALIZER)):
        if number == GRAPH_INPUT:
            declared.append(_value_info(buf, a, b))
        elif number == GRAPH_OUTPUT:
            outputs.append(_value_info(buf, a, b).name)
        else:
            initializers.update(_text(buf, na, nb) for _, na, nb in _messages(buf, a, b, (TENSOR_NAME,)))
    return tuple(i for i in declared if i.name not in initializers), tuple(outputs)


def _value_info(buf: memoryview, start: int, end: int) -> GraphInput:
    name, elem_type, dims = "", 0, None
    for number, a, b in _messages(buf, start, end, (VALUE_NAME, VALUE_TYPE)):
        if number == VALUE_NAME:
            name = _text(buf, a, b)
            continue
        for _, ta, tb in _messages(buf, a, b, (TYPE_TENSOR,)):
            for tnumber, wire, x, y in _fields(buf, ta, tb):
                if tnumber == TENSOR_ELEM_TYPE and wire == 0:
                    elem_type = x
                elif tnumber == TENSOR_SHAPE and wire == LENGTH_DELIMITED:
                    dims = tuple(_dim(buf, da, db) for _, da, db in _messages(buf, x, y, (SHAPE_DIM,)))
    return GraphInput(name, elem_type, dims)


def _dim(buf: memoryview, start: int, end: int) -> int | str | None:
    for number, wire, a, b in _fields(buf, start, end):
        if number == DIM_VALUE and wire == 0:
            return a
        if number == DIM_PARAM and wire == LENGTH_DELIMITED:
            return _text(buf, a, b)
    return None


def _graph_tensors(buf: memoryview, start: int, end: int, external: dict[str, None]) -> None:
    """Add to ``external`` the location of every externally stored tensor of a GraphProto, subgraphs included."""
    wanted = (GRAPH_INITIALIZER, GRAPH_SPARSE_INITIALIZER, GRAPH_NODE)
    for number, a, b in _messages(buf, start, end, wanted):
        if number == GRAPH_INITIALIZER:
            _tensor(buf, a, b, external)
        elif number == GRAPH_SPARSE_INITIALIZER:
            _sparse_tensor(buf, a, b, external)
        else:
            _node_tensors(buf, a, b, external)


def _node_tensors(buf: memoryview, start: int, end: int, external: dict[str, None]) -> None:
    for _, a, b in _messages(buf, start, end, (NODE_ATTRIBUTE,)):
        for number, x, y in _messages(buf, a, b, ATTR_TENSORS + ATTR_SPARSE + ATTR_GRAPHS):
            if number in ATTR_TENSORS:
                _tensor(buf, x, y, external)
            elif number in ATTR_SPARSE:
                _sparse_tensor(buf, x, y, external)
            else:
                _graph_tensors(buf, x, y, external)


def _sparse_tensor(buf: memoryview, start: int, end: int, external: dict[str, None]) -> None:
    for _, a, b in _messages(buf, start, end, SPARSE_TENSORS):
        _tensor(buf, a, b, external)


def _tensor(buf: memoryview, start: int, end: int, external: dict[str, None]) -> None:
    """Add the tensor's external-data location ('' when marked external without one) to ``external``."""
    stored_outside, location = False, None
    for number, wire, a, b in _fields(buf, start, end):
        if number == TENSOR_DATA_LOCATION and wire == 0:
            stored_outside = a == EXTERNAL
        elif number == TENSOR_EXTERNAL_DATA and wire == LENGTH_DELIMITED:
            stored_outside = True
            location = _entry_location(buf, a, b) if location is None else location
    if stored_outside:
        external.setdefault(location or "", None)


def _entry_location(buf: memoryview, start: int, end: int) -> str | None:
    """The value of an external_data entry whose key is "location", else None."""
    key = value = None
    for number, a, b in _messages(buf, start, end, (ENTRY_KEY, ENTRY_VALUE)):
        if number == ENTRY_KEY:
            key = _text(buf, a, b)
        else:
            value = _text(buf, a, b)
    return value if key == "location" else None
