"""FP32/FP16 ONNX graphs: contract, parity with PyTorch via ONNX Runtime, explicit casts."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from export_fixtures import MODEL, SIZE, make_frames

from fair_edge.calibration.frames import preprocess_frames
from fair_edge.export.accuracy import graph_delta
from fair_edge.errors import ExportError
from fair_edge.export.onnx_export import OPSET, example_inputs, export_onnx, torch_reference
from fair_edge.runtime.backends import OnnxRuntimeBackend


@pytest.fixture(scope="module")
def graphs(tmp_path_factory, tiny_detector):
    root = tmp_path_factory.mktemp("onnx")
    return {p: export_onnx(MODEL, tiny_detector, root / f"{p}.onnx", p) for p in ("fp32", "fp16")}


def _dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_graph_contract(graphs):
    g = onnx.load(str(graphs["fp32"]))
    assert g.opset_import[0].version == OPSET
    assert [i.name for i in g.graph.input] == ["highpass", "colour"]
    assert [o.name for o in g.graph.output] == ["anomaly_map", "score"]
    assert _dims(g.graph.input[0]) == ["batch", 1, SIZE, SIZE]
    assert _dims(g.graph.input[1]) == ["batch", 3, SIZE, SIZE]
    assert _dims(g.graph.output[0]) == ["batch", 1, SIZE, SIZE]
    assert _dims(g.graph.output[1]) == ["batch"]
    ops = {n.op_type for n in g.graph.node}
    assert "BatchNormalization" not in ops and "Identity" not in ops  # folded / inlined


@pytest.mark.parametrize("batch", [1, 5])
def test_fp32_parity_with_pytorch(graphs, tiny_detector, batch):
    inputs = {n: t.numpy() for n, t in example_inputs(MODEL, batch=batch, seed=3).items()}
    ref = torch_reference(tiny_detector, inputs, MODEL.input_names)
    out = OnnxRuntimeBackend(graphs["fp32"], MODEL.input_names).infer(inputs)
    (amap, score), (ref_map, ref_score) = out.values(), ref.values()
    assert amap.shape == (batch, 1, SIZE, SIZE) and score.shape == (batch,)
    assert np.abs(amap - ref_map).max() <= 1e-4
    assert np.abs(score - ref_score).max() <= 1e-4


def test_fp16_graph_has_explicit_casts_and_fp32_scoring(graphs):
    g = onnx.load(str(graphs["fp16"]))
    consumers = [n for n in g.graph.node if "highpass" in n.input]
    assert [(n.op_type, n.attribute[0].i) for n in consumers] == [("Cast", onnx.TensorProto.FLOAT16)]
    inits = {t.name: t for t in g.graph.initializer}
    unet_convs = [n for n in g.graph.node if n.op_type == "Conv" and n.name.startswith("/unet/")]
    assert unet_convs and all(inits[n.input[1]].data_type == onnx.TensorProto.FLOAT16 for n in unet_convs)
    head = next(n for n in unet_convs if n.name.startswith("/unet/head/"))
    back = [n for n in g.graph.node if head.output[0] in n.input]
    assert [(n.op_type, n.attribute[0].i) for n in back] == [("Cast", onnx.TensorProto.FLOAT)]
    scorer_inits = {i for n in g.graph.node if n.name.startswith("/scorer/") for i in n.input if i in inits}
    assert all(inits[i].data_type == onnx.TensorProto.FLOAT for i in scorer_inits)


def test_fp16_close_to_fp32(graphs):
    frames = make_frames(12, seed=1) + make_frames(12, seed=2, defect=True)
    d = graph_delta(OnnxRuntimeBackend(graphs["fp32"]), OnnxRuntimeBackend(graphs["fp16"]), preprocess_frames(frames, MODEL))
    print(f"fp16 vs fp32: {d}")
    assert d.map_max_abs < 1e-2 and d.score_max_abs < 1e-2  # fp16 keeps ~3 significant digits
    assert d.score_spearman > 0.99


def test_a_full_disk_names_the_file_and_free_space_not_the_exporter(tiny_detector, tmp_path, monkeypatch):
    """An OSError (ENOSPC) while the exporter wrote the graph was reported as a failed export: "Check that the
    checkpoint loads with fair-edge eval, and report the torch version" (the wrong fix). Now it names the file, the
    free space on its disk and the fix, and removes the half-written file."""
    import errno
    from pathlib import Path

    import torch

    def full(net, args, f, **kwargs):
        Path(f).write_bytes(b"half a graph")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch.onnx, "export", full)
    with pytest.raises(ExportError) as err:
        export_onnx(MODEL, tiny_detector, tmp_path / "m.onnx")
    message = str(err.value)
    assert f"cannot write the ONNX graph {tmp_path / 'm.onnx'} (No space left on device)" in message
    assert f"MB free on the disk of {tmp_path}" in message and "another disk" in message
    assert "torch version" not in message and list(tmp_path.iterdir()) == []


def test_a_read_only_disk_says_read_only_not_free_space(tiny_detector, tmp_path, monkeypatch):
    """A read-only disk (EROFS: the graph file is never made) was reported as a full one: "Free space on that
    disk". Now it names the read-only file system and its fix."""
    import errno
    from pathlib import Path

    import torch

    def read_only(net, args, f, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(f))

    def unlink(self, missing_ok=False):   # as on a read-only mount, even for a missing file
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(torch.onnx, "export", read_only)
    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(ExportError) as err:
        export_onnx(MODEL, tiny_detector, tmp_path / "m.onnx")
    message = str(err.value)
    assert message == (f"cannot write the ONNX graph {tmp_path / 'm.onnx'} (Read-only file system): {tmp_path} is on "
                       "a read-only file system. Choose an --out on a writable disk, or remount that disk read-write, "
                       "then build again."), message
