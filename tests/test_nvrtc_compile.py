"""CI evidence without a GPU: the fused kernel compiles with NVRTC for Jetson Orin and H100."""

import re

import pytest

from fair_edge.errors import KernelError
from fair_edge.preprocess import PreprocessConfig


def _nvrtc_or_skip():
    from fair_edge.errors import GpuUnavailableError
    from fair_edge.runtime import nvrtc_build

    try:
        nvrtc_build.nvrtc_version()
    except (GpuUnavailableError, KernelError) as exc:
        pytest.skip(f"NVRTC unavailable here: {exc}")
    return nvrtc_build


CONFIGS = [PreprocessConfig(), PreprocessConfig(filter="sobel_xy"), PreprocessConfig(filter="gaussian"),
           PreprocessConfig(cutoff=10.0)]


@pytest.mark.parametrize("target", ["compute_87", "compute_90", "sm_87", "sm_90"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.filter}-D{c.cutoff:g}")
@pytest.mark.parametrize("half", [False, True], ids=["fp32", "fp16"])
def test_kernel_compiles(target, cfg, half, tmp_path, monkeypatch):
    nvrtc_build = _nvrtc_or_skip()
    from fair_edge.runtime.preprocess_gpu import KERNEL_NAME, kernel_source, compile_options
    from fair_edge.runtime.highpass_plan import plan_highpass

    monkeypatch.setenv("FAIR_EDGE_CACHE", str(tmp_path))
    binary = nvrtc_build.cached_compile(kernel_source(), "preprocess_kernel.cu", target,
                                        compile_options(plan_highpass(cfg), half))
    if target.startswith("compute_"):
        ptx = binary.decode()
        assert f".target sm_{target[-2:]}" in ptx and f".entry {KERNEL_NAME}" in ptx
    else:
        assert binary[:4] == b"\x7fELF"
    assert len(list(tmp_path.rglob("*"))) == 2  # the kernels folder and one cached file
    again = nvrtc_build.cached_compile(kernel_source(), "preprocess_kernel.cu", target,
                                       compile_options(plan_highpass(cfg), half))
    assert again == binary


def test_compile_error_carries_the_log():
    nvrtc_build = _nvrtc_or_skip()
    with pytest.raises(KernelError, match=re.compile(r"could not compile bad\.cu.*error", re.S)):
        nvrtc_build.compile_source("this is not cuda", "bad.cu", "compute_90")


def test_bad_target_is_refused():
    nvrtc_build = _nvrtc_or_skip()
    with pytest.raises(KernelError, match="sm_90"):
        nvrtc_build.compile_source("", "x.cu", "hopper")


def test_a_damaged_cache_entry_is_compiled_again_never_handed_to_the_driver(tmp_path, monkeypatch):
    """The cache used any non-empty entry: a torn write's bytes went to cuModuleLoadData on every start (the GPU
    pre-processing then fell back to the CPU until someone deleted the cache). Each entry now carries its binary's
    SHA-256; one that fails it is compiled again and replaced. NVRTC is faked: this is the cache, not the compiler."""
    from fair_edge.runtime import nvrtc_build

    monkeypatch.setenv("FAIR_EDGE_CACHE", str(tmp_path))
    monkeypatch.setattr(nvrtc_build, "nvrtc_version", lambda: (12, 6))
    compiled: list[str] = []
    monkeypatch.setattr(nvrtc_build, "compile_source", lambda source, *rest: compiled.append(source) or b"\x7fELF ok")
    assert nvrtc_build.cached_compile("src", "k.cu", "sm_87") == b"\x7fELF ok" and len(compiled) == 1
    assert nvrtc_build.cached_compile("src", "k.cu", "sm_87") == b"\x7fELF ok" and len(compiled) == 1   # cached
    (entry,) = tmp_path.rglob("*.cubin")
    entry.write_bytes(entry.read_bytes()[:-2] + b"??")                                              # torn / damaged
    assert nvrtc_build.cached_compile("src", "k.cu", "sm_87") == b"\x7fELF ok" and len(compiled) == 2
    assert nvrtc_build.cached_compile("src", "k.cu", "sm_87") == b"\x7fELF ok" and len(compiled) == 2   # replaced
