"""The fused kernel's host side: input checks (CPU) and kernel vs reference (GPU, marked ``gpu``)."""

import numpy as np
import pytest

from fair_edge.errors import ConfigError, GpuUnavailableError, KernelError
from fair_edge.runtime.highpass_plan import plan_highpass
from fair_edge.runtime.preprocess_gpu import DeviceFrames, FusedPreprocessor, _output_pointer, shared_bytes
from fair_edge.preprocess import PreprocessConfig, reference_input
from frames import KERNEL_CONFIGS, SIZES, elpv_dir, errors, random_frame, real_frame


class FakeDeviceArray:
    def __init__(self, shape, typestr, strides=None, ptr=0x1000):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "strides": strides,
                                         "data": (ptr, False), "version": 3}


def test_device_frames_validation_names_field_expected_and_found():
    with pytest.raises(KernelError, match="row_pitch must be >= width\\*channels = 5760 bytes; found 5000"):
        DeviceFrames(0x1000, 1, 1080, 1920, 3, 5000, 5000 * 1080).validate()
    with pytest.raises(KernelError, match="channels must be 3 \\(BGR\\) or 1 \\(gray\\); found 4"):
        DeviceFrames(0x1000, 1, 10, 10, 4, 40, 400).validate()
    with pytest.raises(KernelError, match="image_pitch must be >= row_pitch\\*height = 2000 bytes; found 100"):
        DeviceFrames(0x1000, 2, 10, 10, 1, 200, 100).validate()
    DeviceFrames(0x1000, 2, 777, 1001, 3, 3072, 3072 * 777).validate()  # padded rows are fine


def test_device_frames_from_cuda_array_interface():
    f = DeviceFrames.from_cuda_array(FakeDeviceArray((4, 480, 640, 3), "|u1", (480 * 2048, 2048, 3, 1)))
    assert (f.batch, f.height, f.width, f.channels, f.row_pitch, f.image_pitch) == (4, 480, 640, 3, 2048, 480 * 2048)
    with pytest.raises(KernelError, match="uint8"):
        DeviceFrames.from_cuda_array(FakeDeviceArray((4, 480, 640, 3), "<f4"))


def test_output_checks_shape_dtype_and_layout():
    assert _output_pointer(0x2000, (1, 1, 256, 256), False, "highpass_out") == 0x2000
    with pytest.raises(KernelError, match=r"highpass_out must be <f2 \(2, 1, 256, 256\); found <f4"):
        _output_pointer(FakeDeviceArray((2, 1, 256, 256), "<f4"), (2, 1, 256, 256), True, "highpass_out")
    with pytest.raises(KernelError, match="C-contiguous"):
        _output_pointer(FakeDeviceArray((1, 3, 4, 4), "<f4", (4, 64, 16, 4)), (1, 3, 4, 4), False, "colour_out")


def test_shared_memory_default_fits_48k():
    assert shared_bytes(plan_highpass(PreprocessConfig())) <= 48 * 1024


def test_ideal_refused_before_touching_the_gpu():
    with pytest.raises(ConfigError, match="ideal"):
        FusedPreprocessor(PreprocessConfig(filter="ideal"))


def _gpu_or_skip(cfg=PreprocessConfig(), half=False):
    try:
        return FusedPreprocessor(cfg, half=half)
    except GpuUnavailableError as exc:
        pytest.skip(f"no GPU: {exc}")


def test_no_gpu_gives_our_error():
    try:
        pre = FusedPreprocessor(PreprocessConfig())
    except GpuUnavailableError as exc:
        assert "fair_edge.preprocess" in str(exc) or "device" in str(exc)
    else:
        pre.close()
        pre.close()  # idempotent
        pytest.skip("a GPU is present; covered by the gpu tests")


# ----------------------------------------------------------------------------- GPU
class DeviceBuffer:
    """cuMemAlloc'd bytes for the tests; context manager."""

    def __init__(self, nbytes):
        from cuda.bindings import driver
        from fair_edge.export.cuda_api import check

        self.driver, self.check, self.nbytes = driver, check, nbytes
        self.ptr = check(driver.cuMemAlloc(nbytes), "cuMemAlloc")

    def to_host(self, dtype, shape):
        out = np.empty(shape, dtype)
        self.check(self.driver.cuMemcpyDtoH(out.ctypes.data, self.ptr, out.nbytes), "cuMemcpyDtoH")
        return out

    def close(self):
        if self.ptr is not None:
            self.check(self.driver.cuMemFree(self.ptr), "cuMemFree")
            self.ptr = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _run(pre, frames, device_input):
    from cuda.bindings import driver
    from fair_edge.export.cuda_api import check

    b, s, c = frames.shape[0], pre.plan.image_size, pre.plan.channels
    item = 2 if pre.half else 4
    with DeviceBuffer(b * c * s * s * item) as hp, DeviceBuffer(b * 3 * s * s * item) as col:
        stream = check(driver.cuStreamCreate(0), "cuStreamCreate")
        try:
            if device_input:
                with DeviceBuffer(frames.nbytes) as src:
                    check(driver.cuMemcpyHtoD(src.ptr, frames.ctypes.data, frames.nbytes), "cuMemcpyHtoD")
                    h, w = frames.shape[1:3]
                    ch = frames.shape[3] if frames.ndim == 4 else 1
                    pre.run(DeviceFrames(int(src.ptr), b, h, w, ch, w * ch, h * w * ch), int(hp.ptr), int(col.ptr), stream)
                    check(driver.cuStreamSynchronize(stream), "cuStreamSynchronize")
            else:
                pinned = check(driver.cuMemHostAlloc(frames.nbytes, 0), "cuMemHostAlloc")
                try:
                    view = np.ctypeslib.as_array((np.ctypeslib.ctypes.c_uint8 * frames.nbytes).from_address(int(pinned)))
                    host = view.reshape(frames.shape)
                    host[...] = frames
                    pre.run(host, int(hp.ptr), int(col.ptr), stream)
                    check(driver.cuStreamSynchronize(stream), "cuStreamSynchronize")
                finally:
                    check(driver.cuMemFreeHost(pinned), "cuMemFreeHost")
        finally:
            check(driver.cuStreamDestroy(stream), "cuStreamDestroy")
        dtype = np.float16 if pre.half else np.float32
        return hp.to_host(dtype, (b, c, s, s)), col.to_host(dtype, (b, 3, s, s))


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", KERNEL_CONFIGS, ids=lambda c: f"{c.filter}-D{c.cutoff:g}-n{c.order}")
@pytest.mark.parametrize("half", [False, True], ids=["fp32", "fp16"])
@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("device_input", [False, True], ids=["pinned", "device"])
def test_kernel_matches_reference(cfg, half, batch, device_input):
    pre = _gpu_or_skip(cfg, half)
    with pre:
        for width, height in SIZES:
            kinds = ["random"] + (["real", "real_gray"] if elpv_dir() is not None else [])
            for kind in kinds:
                make = {"random": lambda i: random_frame(width, height, seed=i),
                        "real": lambda i: np.roll(real_frame(width, height), 37 * i, axis=1),
                        "real_gray": lambda i: np.roll(real_frame(width, height, 1), 37 * i, axis=1)}[kind]
                frames = np.stack([make(i) for i in range(batch)])
                hp, col = _run(pre, frames, device_input)
                for i in range(batch):
                    ref_hp, ref_col = reference_input(frames[i], cfg)
                    for found, ref in ((hp[i], ref_hp), (col[i], ref_col)):
                        rel, mx = errors(found, ref)
                        assert rel <= 1e-3 and mx <= 1e-3, f"{kind} {width}x{height} frame {i}: rel {rel:.2e} max {mx:.2e}"


@pytest.mark.gpu
def test_close_is_idempotent_and_run_after_close_fails():
    pre = _gpu_or_skip()
    pre.close()
    pre.close()
    with pytest.raises(KernelError, match="closed"):
        pre.run(np.zeros((1, 8, 8, 3), np.uint8), 1, 1)


@pytest.mark.gpu
def test_bad_host_frames_are_refused():
    with _gpu_or_skip() as pre:
        with pytest.raises(KernelError, match="found float32"):
            pre.run(np.zeros((1, 8, 8, 3), np.float32), 1, 1)
        with pytest.raises(KernelError, match="C-contiguous"):
            pre.run(np.zeros((1, 8, 16, 3), np.uint8)[:, :, ::2], 1, 1)


@pytest.mark.gpu
@pytest.mark.parametrize("half", [False, True], ids=["fp32", "fp16"])
def test_run_tiles_crops_in_the_launch_what_host_cut_tiles_give(half):
    torch = pytest.importorskip("torch")
    from fair_edge.tiling import TilingConfig, split_frame, tile_layout

    cfg = PreprocessConfig(image_size=128, cutoff=15.0)
    with _gpu_or_skip(cfg, half) as pre:
        frames = np.stack([random_frame(1920, 1080, seed=i) for i in range(2)])
        layout = tile_layout((1080, 1920), TilingConfig(256, 32, roi=(40, 20, 1800, 1000)), 128)
        n, dtype = 2 * layout.count, torch.float16 if half else torch.float32
        outs = [torch.empty(n, c, 128, 128, device="cuda", dtype=dtype) for c in (1, 3, 1, 3)]
        stream = torch.cuda.current_stream().cuda_stream
        pre.run_tiles(frames, layout.crops, 256, outs[0], outs[1], stream=stream)
        pre.run(np.stack([t for f in frames for t in split_frame(f, layout)]), outs[2], outs[3], stream=stream)
        torch.cuda.synchronize()
        assert torch.equal(outs[0], outs[2]) and torch.equal(outs[1], outs[3])
        with pytest.raises(KernelError, match="does not fit"):
            pre.run_tiles(frames[:, :500], layout.crops, 256, outs[0], outs[1], stream=stream)
