"""load_bundle refuses what its checksums alone let through: files and fused members outside the bundle folder,
graph weights in unlisted external-data files, graphs whose inputs disagree with bundle.json, and normal maps that
would fill the memory (a zip bomb, a header declaring 400 GB)."""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile

import numpy as np
import onnx
import pytest
from export_fixtures import make_frames

from fair_edge.checksums import sha256_file
from fair_edge.errors import BundleError
from fair_edge.export import normal_maps as nm
from fair_edge.export import onnx_scan
from fair_edge.export.build import BuildOptions, build_bundle
from fair_edge.export.bundle import MANIFEST, load_bundle, write_signed_json
from fair_edge.models.checkpoint import load_checkpoint
from fair_edge.runtime.fusion import load_fused_bundle, write_fusion_manifest

GRAPH = "model.fp32.onnx"


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_ckpt_path):
    out = tmp_path_factory.mktemp("checks") / "b"
    options = BuildOptions("fp32", max_batch=4, command="fair-edge build ckpt.pt --out b")
    return build_bundle(load_checkpoint(tiny_ckpt_path), out, options, normal_frames=make_frames(12, seed=3)).bundle


@pytest.fixture
def copy(built, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(built.root, dst)
    return dst


def _manifest(root):
    return json.loads((root / MANIFEST).read_text())


def _entry(path):
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def _resign(root, data):
    """Re-sign bundle.json after an edit, as a hostile but self-consistent bundle would be."""
    write_signed_json(root / MANIFEST, data)


# ----------------------------------------------------------------------------- files outside the bundle
def _graph_named(root, rel, target):
    """Point graph.onnx and graph.reference_onnx at ``rel`` (listed with ``target``'s checksum)."""
    data = _manifest(root)
    (root / GRAPH).unlink()
    del data["files"][GRAPH]
    data["files"][rel] = _entry(target)
    data["graph"]["onnx"] = data["graph"]["reference_onnx"] = rel
    _resign(root, data)


@pytest.mark.parametrize("how", ["dotdot", "absolute"])
def test_a_graph_named_outside_the_bundle_is_refused(copy, tmp_path, how):
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(copy / GRAPH, outside / "other.onnx")
    rel = "../outside/other.onnx" if how == "dotdot" else str(outside / "other.onnx")
    _graph_named(copy, rel, outside / "other.onnx")
    found = "a name with '..'" if how == "dotdot" else "an absolute path"
    with pytest.raises(BundleError, match=rf"names the file '{rel}', outside the bundle: expected a relative name "
                                          rf"inside .*; found {found}\. Rebuild it with `fair-edge build ckpt.pt"):
        load_bundle(copy)


def test_a_files_entry_naming_a_system_file_is_refused_before_it_is_read(copy, tmp_path, monkeypatch):
    secret = tmp_path / "hostname"
    secret.write_text("station-7\n")
    data = _manifest(copy)
    data["files"][str(secret)] = _entry(secret)
    _resign(copy, data)
    with pytest.raises(BundleError, match=rf"names the file '{secret}', outside the bundle.*absolute path"):
        load_bundle(copy)


def test_a_link_inside_the_bundle_leading_out_is_refused(copy, tmp_path):
    outside = tmp_path / "other.onnx"
    shutil.move(copy / GRAPH, outside)   # same bytes: the checksum alone passes it
    os.symlink(outside, copy / GRAPH)
    with pytest.raises(BundleError, match=rf"names the file '{GRAPH}', a symbolic link leading outside the bundle "
                                          rf"\(to {outside}\)"):
        load_bundle(copy)


def test_links_that_stay_inside_the_bundle_still_load(copy, tmp_path):
    (copy / "graphs").mkdir()
    shutil.move(copy / GRAPH, copy / "graphs" / GRAPH)
    os.symlink(f"graphs/{GRAPH}", copy / GRAPH)   # a link to another file of the bundle
    data = _manifest(copy)
    data["files"][f"graphs/{GRAPH}"] = data["files"][GRAPH]
    _resign(copy, data)
    os.symlink(copy, tmp_path / "current")   # the bundle folder reached through a link
    assert load_bundle(tmp_path / "current").onnx_path.name == GRAPH


def test_fused_members_outside_the_fused_folder_are_refused(built, tmp_path):
    fused = tmp_path / "fused"
    fused.mkdir()
    sha = sha256_file(built.root / MANIFEST)
    relative = os.path.relpath(built.root, fused)
    members = [{"path": str(built.root), "manifest_sha256": sha}, {"path": relative, "manifest_sha256": sha}]
    manifest = {"format": "fair-edge-fusion", "format_version": 1, "members": members, "rule": "mean",
                "stats": [{"mean": 1.0, "std": 0.1}] * 2, "threshold": built.threshold.to_dict(), "grid": None}
    write_fusion_manifest(fused, manifest)
    with pytest.raises(BundleError, match=rf"names the member '{built.root}', outside the bundle.*absolute path.*"
                                          r"Rebuild with `fair-edge fuse"):
        load_fused_bundle(fused)
    write_fusion_manifest(fused, {**manifest, "members": members[1:] * 2})
    with pytest.raises(BundleError, match=r"names the member '\.\./.*', outside the bundle.*a name with '\.\.'"):
        load_fused_bundle(fused)


def test_fused_members_copied_inside_still_load(built, tmp_path):
    fused = tmp_path / "fused"
    for name in ("m0", "m1"):
        shutil.copytree(built.root, fused / name)
    sha = sha256_file(built.root / MANIFEST)
    write_fusion_manifest(fused, {"format": "fair-edge-fusion", "format_version": 1, "rule": "mean",
                                  "members": [{"path": "m0", "manifest_sha256": sha}, {"path": "m1", "manifest_sha256": sha}],
                                  "stats": [{"mean": 1.0, "std": 0.1}] * 2, "threshold": built.threshold.to_dict()})
    assert len(load_fused_bundle(fused).members) == 2


# ----------------------------------------------------------------------------- external data
def _externalise(root, location, move_to=None):
    """Store the graph's weights in an external-data file its tensors name as ``location`` (moved to ``move_to``);
    list the graph with its new checksum, not the side file."""
    graph = onnx.load(str(root / GRAPH))
    onnx.save_model(graph, str(root / GRAPH), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="w.bin", size_threshold=0)
    if location != "w.bin":
        stored = onnx.load(str(root / GRAPH), load_external_data=False)
        for tensor in stored.graph.initializer:
            for item in tensor.external_data:
                if item.key == "location":
                    item.value = location
        onnx.save_model(stored, str(root / GRAPH))
        shutil.move(root / "w.bin", move_to)
    data = _manifest(root)
    data["files"][GRAPH] = _entry(root / GRAPH)
    _resign(root, data)
    return data


def test_graph_weights_in_an_unlisted_side_file_are_refused(copy):
    _externalise(copy, "w.bin")
    with pytest.raises(BundleError, match=rf"graph .*{GRAPH} keeps weights in the external-data file 'w.bin', a file "
                                          r"bundle.json does not list with a checksum.*Rebuild it with `fair-edge build"):
        load_bundle(copy)


@pytest.mark.parametrize("how", ["dotdot", "absolute"])
def test_graph_weights_outside_the_bundle_are_refused(copy, tmp_path, how):
    side = tmp_path / "w.bin"
    _externalise(copy, "../w.bin" if how == "dotdot" else str(side), side)
    with pytest.raises(BundleError, match=r"keeps weights in the external-data file .*w.bin', a file outside the bundle"):
        load_bundle(copy)


def test_graph_weights_in_a_listed_side_file_load(copy):
    data = _externalise(copy, "w.bin")
    data["files"]["w.bin"] = _entry(copy / "w.bin")   # checksummed like every bundle file
    _resign(copy, data)
    assert load_bundle(copy).onnx_path.name == GRAPH


def test_scan_finds_external_tensors_in_node_attributes_and_refuses_a_damaged_file(tmp_path):
    from onnx import TensorProto, helper

    const = helper.make_tensor("c", TensorProto.FLOAT, [4], [1.0, 2.0, 3.0, 4.0])
    const.data_location = TensorProto.EXTERNAL
    const.ClearField("float_data")
    const.external_data.add(key="offset", value="0")
    const.external_data.add(key="location", value="side/c.bin")
    node = helper.make_node("Constant", [], ["y"], value=const)
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    path = tmp_path / "g.onnx"
    onnx.save_model(helper.make_model(helper.make_graph([node], "g", [], [out])), str(path))
    facts = onnx_scan.scan_graph(path)
    assert facts.external_files == ("side/c.bin",) and facts.outputs == ("y",) and facts.inputs == ()
    path.write_bytes(b"\x3a\xff")   # a graph field longer than the file
    with pytest.raises(onnx_scan.GraphFormatError):
        onnx_scan.scan_graph(path)


def test_scan_field_numbers_are_onnx_protos():
    numbers = {(onnx.ModelProto, "graph"): onnx_scan.MODEL_GRAPH,
               (onnx.ModelProto, "training_info"): onnx_scan.MODEL_TRAINING_INFO,
               (onnx.ModelProto, "functions"): onnx_scan.MODEL_FUNCTIONS,
               (onnx.FunctionProto, "node"): onnx_scan.FUNCTION_NODE,
               (onnx.GraphProto, "node"): onnx_scan.GRAPH_NODE, (onnx.GraphProto, "initializer"): onnx_scan.GRAPH_INITIALIZER,
               (onnx.GraphProto, "sparse_initializer"): onnx_scan.GRAPH_SPARSE_INITIALIZER,
               (onnx.GraphProto, "input"): onnx_scan.GRAPH_INPUT, (onnx.GraphProto, "output"): onnx_scan.GRAPH_OUTPUT,
               (onnx.NodeProto, "attribute"): onnx_scan.NODE_ATTRIBUTE,
               (onnx.TensorProto, "name"): onnx_scan.TENSOR_NAME,
               (onnx.TensorProto, "external_data"): onnx_scan.TENSOR_EXTERNAL_DATA,
               (onnx.TensorProto, "data_location"): onnx_scan.TENSOR_DATA_LOCATION,
               (onnx.StringStringEntryProto, "key"): onnx_scan.ENTRY_KEY,
               (onnx.StringStringEntryProto, "value"): onnx_scan.ENTRY_VALUE,
               (onnx.ValueInfoProto, "name"): onnx_scan.VALUE_NAME, (onnx.ValueInfoProto, "type"): onnx_scan.VALUE_TYPE,
               (onnx.TypeProto, "tensor_type"): onnx_scan.TYPE_TENSOR,
               (onnx.TypeProto.Tensor, "elem_type"): onnx_scan.TENSOR_ELEM_TYPE,
               (onnx.TypeProto.Tensor, "shape"): onnx_scan.TENSOR_SHAPE,
               (onnx.TensorShapeProto, "dim"): onnx_scan.SHAPE_DIM,
               (onnx.TensorShapeProto.Dimension, "dim_value"): onnx_scan.DIM_VALUE,
               (onnx.TensorShapeProto.Dimension, "dim_param"): onnx_scan.DIM_PARAM}
    for (message, field), number in numbers.items():
        assert message.DESCRIPTOR.fields_by_name[field].number == number, (message.DESCRIPTOR.name, field)
    attribute = onnx.AttributeProto.DESCRIPTOR.fields_by_name
    assert tuple(attribute[f].number for f in ("t", "tensors")) == onnx_scan.ATTR_TENSORS
    assert tuple(attribute[f].number for f in ("sparse_tensor", "sparse_tensors")) == onnx_scan.ATTR_SPARSE
    assert tuple(attribute[f].number for f in ("g", "graphs")) == onnx_scan.ATTR_GRAPHS
    assert (onnx.TensorProto.EXTERNAL, onnx.TensorProto.FLOAT) == (onnx_scan.EXTERNAL, onnx_scan.FLOAT)


# ----------------------------------------------------------------------------- graph vs bundle.json
def _edit_graph(root, edit):
    graph = onnx.load(str(root / GRAPH))
    edit(graph.graph)
    onnx.save_model(graph, str(root / GRAPH))
    data = _manifest(root)
    data["files"][GRAPH] = _entry(root / GRAPH)
    _resign(root, data)


def _resize_inputs(graph, size):
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim
        dims[2].dim_value = dims[3].dim_value = size


def test_a_graph_taking_another_input_size_is_refused_at_load(copy, built):
    size = built.image_size
    _edit_graph(copy, lambda g: _resize_inputs(g, size // 2))
    name = built.model.inputs[0].name
    with pytest.raises(BundleError, match=rf"takes input '{name}' as float32 \[batch, 1, {size // 2}, {size // 2}\]; "
                                          rf"bundle.json's model \(.*\) feeds it float32 \[batch, 1, {size}, {size}\]"):
        load_bundle(copy)


def test_a_graph_with_a_fixed_batch_or_renamed_output_is_refused_at_load(copy, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(copy, other)
    _edit_graph(copy, lambda g: setattr(g.input[0].type.tensor_type.shape.dim[0], "dim_value", 1))
    with pytest.raises(BundleError, match=r"as float32 \[1, 1, .*feeds it float32 \[batch, 1,"):
        load_bundle(copy)

    def rename_score(graph):
        graph.output[1].name = "score_renamed"
        for node in graph.node:
            node.output[:] = ["score_renamed" if o == "score" else o for o in node.output]

    _edit_graph(other, rename_score)
    with pytest.raises(BundleError, match=r"returns outputs \['anomaly_map', 'score_renamed'\]; a bundle's graph must "
                                          r"return \['anomaly_map', 'score'\] \(missing \['score'\]\)"):
        load_bundle(other)


def test_onnx_graph_refuses_a_graph_without_the_contract_outputs(copy):
    from fair_edge.calibration.onnx_graph import OnnxGraph

    graph = onnx.load(str(copy / GRAPH))
    graph.graph.output[1].name = "s"
    for node in graph.graph.node:
        node.output[:] = ["s" if o == "score" else o for o in node.output]
    onnx.save_model(graph, str(copy / GRAPH))
    with pytest.raises(BundleError, match=r"has outputs \['anomaly_map', 's'\]; expected \['anomaly_map', 'score'\]"):
        OnnxGraph(copy / GRAPH)


# ----------------------------------------------------------------------------- normal maps that fill the memory
def _npy_header(shape):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _npy(array):
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _npz(path, maps_bytes, grid, compress=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compress) as archive:
        archive.writestr("maps.npy", maps_bytes)
        archive.writestr("pool.npy", _npy(np.int64(1)))
        archive.writestr("grid.npy", _npy(np.asarray(grid, np.int64)))
    return path


def test_a_zip_bomb_of_normal_maps_is_refused_before_it_inflates(tmp_path):
    shape = (17, 1024, 1024)   # 68 MiB of zeros: over the 64 MiB cap, deflated to ~70 kB
    path = _npz(tmp_path / "normal_maps.npz", _npy_header(shape) + bytes(int(np.prod(shape)) * 4), shape[1:],
                zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 1 << 20
    for read in (nm.read_normal_maps, nm.normal_maps_grid):
        with pytest.raises(BundleError, match=rf"normal maps {path}: member 'maps.npy' inflates to \d+ bytes; a "
                                              r"bundle's normal maps are at most 67108864 bytes.*Rebuild the bundle"):
            read(path)


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_normal_maps_declaring_400_gb_are_a_bundle_error_not_a_memory_error(tmp_path, suffix):
    shape = (100000, 1000, 1000)
    content = _npy_header(shape) + bytes(16384)
    path = tmp_path / f"normal_maps{suffix}"
    if suffix == ".npy":
        path.write_bytes(content)
    else:
        _npz(path, content, shape[1:])
    with pytest.raises(BundleError, match=r"declares a float32 array of shape \(100000, 1000, 1000\) \(400000000000 "
                                          r"bytes\) in \d+ bytes; expected at most 67108864 bytes"):
        nm.read_normal_maps(path)


def test_normal_maps_that_run_out_of_memory_are_a_bundle_error(tmp_path, monkeypatch):
    path = tmp_path / "normal_maps.npy"
    np.save(path, np.ones((2, 4, 4), np.float32))

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(nm.np, "load", no_memory)
    with pytest.raises(BundleError, match=rf"normal maps {path} do not fit in this machine's memory.*Rebuild"):
        nm.read_normal_maps(path)


def test_normal_maps_within_the_cap_still_read(tmp_path):
    maps = np.random.default_rng(0).random((3, 10, 12), dtype=np.float32)
    np.save(tmp_path / "normal_maps.npy", maps)
    assert np.array_equal(nm.read_normal_maps(tmp_path / "normal_maps.npy").maps, maps)
    pooled = tmp_path / "normal_maps.npz"   # as write_normal_maps stores maps it pooled to fit
    with open(pooled, "wb") as fh:
        np.savez(fh, maps=nm.max_pool(maps, 2), pool=np.int64(2), grid=np.asarray((10, 12), np.int64))
    assert nm.read_normal_maps(pooled).grid == (10, 12) and nm.normal_maps_grid(pooled) == (10, 12)
