"""The cuda-python result checker and NVRTC compilation (CPU only: NVRTC needs no GPU or driver)."""


import pytest

from fair_edge.errors import KernelError
from fair_edge.export.cuda_api import check


def test_check_success_returns_none_value_or_tuple():
    assert check((0,), "cuInit") is None
    assert check((0, 42), "cuDeviceGet") == 42
    assert check((0, "a", "b"), "cuModuleGetGlobal") == ("a", "b")


def test_check_failure_names_api_and_error():
    with pytest.raises(KernelError, match=r"cuModuleLoadData failed: .*\(200\)"):
        check((200, None), "cuModuleLoadData")


def test_check_rejects_non_tuple():
    with pytest.raises(KernelError, match="expected a cuda-python tuple"):
        check(None, "cuInit")


def test_check_with_real_enums():
    bindings = pytest.importorskip("cuda.bindings")
    from cuda.bindings import driver, nvrtc

    assert check((driver.CUresult.CUDA_SUCCESS, 7), "cuDeviceGetCount") == 7
    assert check((nvrtc.nvrtcResult.NVRTC_SUCCESS,), "nvrtcCompileProgram") is None
    with pytest.raises(KernelError, match="cuInit failed: CUDA_ERROR_NO_DEVICE"):
        check((driver.CUresult.CUDA_ERROR_NO_DEVICE,), "cuInit")
    with pytest.raises(KernelError, match="nvrtcCompileProgram failed: NVRTC_ERROR_COMPILATION"):
        check((nvrtc.nvrtcResult.NVRTC_ERROR_COMPILATION,), "nvrtcCompileProgram")
    assert bindings
