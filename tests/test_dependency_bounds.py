"""The declared dependency bounds hold: what each lower bound is for, that pyproject.toml, the Jetson Dockerfile and
docs/jetson.md state at least that, and that what Python 3.10's onnxruntime (<= 1.23) lacks, INT8 calibration's
cache API (onnxruntime >= 1.27), or cannot import there (its quantization package under onnx 1.15), is needed by
`build --int8` only, with one error that says so."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import onnx
import onnxruntime
import pytest
import torch.nn.functional as F

from fair_edge.calibration import ranges
from fair_edge.calibration.int8 import Int8Settings, quantize_int8, reusable_cache
from fair_edge.calibration.int8_cpu import quantize_int8_cpu
from fair_edge.errors import ExportError

ROOT = Path(__file__).resolve().parents[1]

# package: (lowest version that works, why)
NEEDED = {
    "torch": ("2.4", "torch.onnx.export(dynamo=False); weights_only loads of MultiStepLR's Counter (resume)"),
    "typer": ("0.27", "sub-apps joined without a name; positional arguments' help (tests/test_cli_help.py)"),
    "pymodbus": ("3.13", "pymodbus.simulator.DataType: the demo's simulated PLC (fair_edge/line/sim_sink_plc.py)"),
    "prometheus-client": ("0.20", "start_http_server returns (server, thread) (fair_edge/line/metrics.py)"),
    "onnx": ("1.16", "onnxruntime >= 1.19's quantization imports TensorProto.INT4 (build --int8)"),
}
# where each must be stated: pyproject's dependencies or extras, the Jetson image, the Jetson install page
STATED_IN = {"torch": ("pyproject.toml", "deploy/jetson/Dockerfile", "docs/jetson.md"),
             "typer": ("pyproject.toml", "deploy/jetson/Dockerfile"),
             "pymodbus": ("pyproject.toml", "deploy/jetson/Dockerfile"),
             "prometheus-client": ("pyproject.toml", "deploy/jetson/Dockerfile"),
             "onnx": ("pyproject.toml", "deploy/jetson/Dockerfile")}
OLD_ORT = ("load_tensors_data", "save_tensors_data")  # absent before onnxruntime 1.27 (every Python 3.10 wheel)


def version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def lower_bounds(text: str, package: str) -> list[str]:
    """Every ``"PACKAGE>=X"`` (extras and further clauses allowed) quoted in ``text``: the X's."""
    name = re.escape(package)
    return re.findall(rf'"{name}(?:\[[^\]"]*\])?\s*>=\s*([0-9][0-9.]*)', text)


@pytest.mark.parametrize("package", sorted(NEEDED))
def test_every_stated_lower_bound_is_at_least_what_the_code_needs(package):
    needed, why = NEEDED[package]
    for rel in STATED_IN[package]:
        found = lower_bounds((ROOT / rel).read_text(encoding="utf-8"), package)
        assert found, f"{rel} states no {package}>= bound; expected >= {needed} ({why})"
        low = [v for v in found if version(v) < version(needed)]
        assert not low, f"{rel}: {package}>={low[0]}; expected >= {needed} ({why})"


def test_the_plc_metrics_and_test_extras_carry_the_bounds():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    extras = {name: body for name, body in re.findall(r"^(\w+) = \[(.*?)\]", text, re.M | re.S)}
    assert lower_bounds(extras["plc"], "pymodbus") == ["3.13"] and lower_bounds(extras["test"], "pymodbus") == ["3.13"]
    assert lower_bounds(extras["metrics"], "prometheus-client") == ["0.20"]
    assert lower_bounds(extras["test"], "prometheus-client") == ["0.20"]


# ---------------------------------------------------------------- onnxruntime < 1.27 (Python 3.10)

CLI_WITH_OLD_ORT = """
import runpy, sys
if {unimportable}:
    sys.modules["onnxruntime.quantization"] = None  # its import fails, as under onnx 1.15 with onnxruntime >= 1.19
try:
    from onnxruntime.quantization import calibrate
    for name in {names!r}:
        if hasattr(calibrate, name):
            delattr(calibrate, name)
except (ImportError, AttributeError):
    pass
import fair_edge.calibration.int8_cpu, fair_edge.export.build, fair_edge.station.run  # INT8 API imported lazily
sys.argv = ["fair-edge", *sys.argv[1:]]
runpy.run_module("fair_edge.cli", run_name="__main__")  # python -m fair_edge.cli
"""


@pytest.mark.parametrize("unimportable", [False, True], ids=["no-cache-api", "no-quantization"])
@pytest.mark.parametrize("args", [["--help"], ["build", "--help"]], ids=["help", "build-help"])
def test_the_cli_starts_on_an_onnxruntime_without_the_calibration_cache_api(args, unimportable):
    snippet = CLI_WITH_OLD_ORT.format(names=OLD_ORT, unimportable=unimportable)
    done = subprocess.run([sys.executable, "-c", snippet, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert {"--help": "build", "build": "--int8"}[args[0]] in done.stdout


@pytest.fixture
def old_ort(monkeypatch):
    """This process's onnxruntime without the calibration-cache API, as onnxruntime 1.17-1.26 are."""
    calibrate = pytest.importorskip("onnxruntime.quantization.calibrate")
    for name in OLD_ORT:
        monkeypatch.delattr(calibrate, name, raising=False)


def assert_one_line_int8_error(exc: pytest.ExceptionInfo) -> None:
    text = str(exc.value)
    assert "\n" not in text
    assert text.startswith(f"INT8 calibration needs onnxruntime >= 1.27 (Python >= 3.11); found onnxruntime "
                           f"{onnxruntime.__version__}. Build FP32/FP16 bundles here, or build --int8 on a Python "
                           "3.11+ machine (the bundle runs on this one)")


@pytest.mark.parametrize("quantize", [quantize_int8, quantize_int8_cpu], ids=["tensorrt-graph", "cpu-graph"])
def test_int8_quantisation_on_an_old_onnxruntime_raises_one_line_naming_the_version_and_the_fix(
        quantize, old_ort, tmp_path):
    with pytest.raises(ExportError) as exc:
        quantize(tmp_path / "model.onnx", tmp_path / "int8.onnx", {}, ("/unet/",), Int8Settings(),
                 tmp_path / "calibration.json")
    assert_one_line_int8_error(exc)


def test_the_cache_and_range_helpers_refuse_an_old_onnxruntime_too(old_ort, tmp_path):
    with pytest.raises(ExportError) as exc:
        reusable_cache(tmp_path / "calibration.json", "key")
    assert_one_line_int8_error(exc)
    with pytest.raises(ExportError) as exc:
        ranges.calibrate_ranges(tmp_path / "model.onnx", None, ["Conv"], ("/unet/",), None, {}, 1,
                                tmp_path / "calibration.json")
    assert_one_line_int8_error(exc)


def test_a_quantize_static_without_calibration_cache_path_is_refused(monkeypatch):
    quantization = pytest.importorskip("onnxruntime.quantization")

    def quantize_static_1_23(model_input, model_output, calibration_data_reader, quant_format=None,
                             extra_options=None):
        raise AssertionError("not called")

    for name in OLD_ORT:  # the signature alone decides
        monkeypatch.setattr(quantization.calibrate, name, object(), raising=False)
    monkeypatch.setattr(quantization, "quantize_static", quantize_static_1_23)
    with pytest.raises(ExportError) as exc:
        ranges.require_int8_onnxruntime()
    assert_one_line_int8_error(exc)


def test_a_quantization_package_that_does_not_import_names_onnx_and_the_fix(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime.quantization", None)  # its import raises ImportError
    with pytest.raises(ExportError) as exc:
        quantize_int8(tmp_path / "model.onnx", tmp_path / "int8.onnx", {}, ("/unet/",), Int8Settings(),
                      tmp_path / "calibration.json")
    text = str(exc.value)
    found = f"(onnxruntime {onnxruntime.__version__}, onnx {onnx.__version__}: ModuleNotFoundError: "
    assert "\n" not in text and found in text
    assert text.endswith("expected onnx >= 1.16: pip install -U onnx.")


def _has_cache_api() -> bool:
    try:
        from onnxruntime.quantization import calibrate
    except (ImportError, AttributeError):
        return False
    return all(hasattr(calibrate, name) for name in OLD_ORT)


@pytest.mark.skipif(not _has_cache_api(), reason="onnxruntime < 1.27 here")
def test_an_onnxruntime_with_the_api_passes_the_check():
    assert ranges.require_int8_onnxruntime() is None


# ---------------------------------------------------------------- torch 2.4 - 2.9 (PatchCore's colour channels)

class _PoolSpy:
    """``torch.nn.functional`` for one module, recording the type of each ``avg_pool2d`` kernel size."""

    def __init__(self) -> None:
        self.kernel_types: list[type] = []

    def __getattr__(self, name):
        return getattr(F, name)

    def avg_pool2d(self, x, kernel_size, *args, **kwargs):
        self.kernel_types.append(type(kernel_size))
        return F.avg_pool2d(x, kernel_size, *args, **kwargs)


def test_patchcore_colour_channels_pool_with_python_ints_under_the_onnx_exporter(monkeypatch, tmp_path):
    """Under the TorchScript exporter a tap's ``shape[-1]`` is a traced tensor; torch 2.4-2.9's avg_pool2d rejects a
    kernel size computed from it (`build` of a PatchCore with colour_weight > 0 failed there)."""
    from fair_edge.export.onnx_export import export_onnx
    from fair_edge.models.patchcore import model as pm
    from fair_edge.models.registry import ModelSpec
    from fair_edge.preprocess import PreprocessConfig

    spy = _PoolSpy()
    monkeypatch.setattr(pm, "F", spy)
    settings = pm.PatchcoreSettings(embed_dim=32, bank_max=64, colour_weight=25.0)
    export_onnx(ModelSpec("patchcore", PreprocessConfig(image_size=32), settings),
                pm.PatchcoreDetector(settings, 32).eval(), tmp_path / "model.onnx")
    assert len(spy.kernel_types) >= 2 and set(spy.kernel_types) == {int}, spy.kernel_types
