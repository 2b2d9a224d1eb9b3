"""Host side of the fused pre-processing kernel: frames -> (high-pass, colour) in one launch per batch.

    with FusedPreprocessor(PreprocessConfig(), half=True) as pre:
        pre.run(frames, highpass_out, colour_out, stream=torch.cuda.current_stream().cuda_stream)

frames: (B, H, W, 3) uint8 BGR or (B, H, W) uint8 gray, either a host numpy array (copied on
``stream`` into a device staging buffer first: one cuMemcpyHtoDAsync + one launch; pin it, e.g.
``torch.empty(..., pin_memory=True).numpy()``, for a truly asynchronous copy and keep it alive until
the stream passes) or ``DeviceFrames`` (device pointer with row pitch and frame pitch, any layout a
camera/decoder hands over; zero copies). Outputs are caller-owned device buffers, C-contiguous:
highpass (B, C, S, S), colour (B, 3, S, S) RGB in [0, 1], FP32 or FP16 (``half``): an int device
pointer or any object with ``__cuda_array_interface__`` (torch, CuPy), whose shape/dtype are checked.
The work is enqueued on ``stream`` (a CUstream or its int handle; 0 = legacy default stream);
nothing synchronises. Host frames go through one staging buffer per instance: use one stream per
instance (stream order keeps consecutive batches safe). The CPU equivalent is ``fair_edge.preprocess.reference_input``.

Tiled models: ``run_tiles(frames, crops, tile, ...)`` crops and resizes every tile of every frame in the
same one launch (per-item byte offsets into the frames, ``tile_offsets``); the frames go up whole, once.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib import resources

import numpy as np

from fair_edge.errors import GpuUnavailableError, KernelError
from fair_edge.export.cuda_api import check, import_cuda
from fair_edge.runtime.highpass_plan import RADII, TILE, HighpassPlan, plan_highpass
from fair_edge.runtime.nvrtc_build import cached_compile
from fair_edge.preprocess import PreprocessConfig

log = logging.getLogger(__name__)
KERNEL_NAME = "fair_preprocess"
THREADS = 256
MAX_FRAME_SIDE = 32767
DEFAULT_SMEM = 48 * 1024


def kernel_source() -> str:
    """The CUDA C source shipped in the package (fair_edge/runtime/preprocess_kernel.cu)."""
    return resources.files("fair_edge.runtime").joinpath("preprocess_kernel.cu").read_text()


def compile_options(plan: HighpassPlan, half: bool) -> tuple[str, ...]:
    """NVRTC -D options selecting the plan's filter, radius, rank and output precision."""
    return (f"-DIMAGE_SIZE={plan.image_size}", f"-DRADIUS={plan.radius}", f"-DRANK={plan.rank}",
            f"-DSOBEL={int(plan.filter == 'sobel_xy')}", f"-DOUT_HALF={int(half)}")


def shared_bytes(plan: HighpassPlan) -> int:
    """Dynamic shared memory per block, bytes (mirrors RS, GP, TP in the .cu)."""
    return _shared_bytes(plan.radius, plan.filter)


def _shared_bytes(radius: int, filter: str) -> int:
    rs = TILE + 2 * radius
    floats = rs * (rs | 1) + (0 if filter == "sobel_xy" else rs * (TILE + 1))
    return 4 * floats


def largest_radius(limit: int, filter: str) -> int:
    """The largest high-pass radius whose tile fits ``limit`` bytes of shared memory per block."""
    return max((r for r in RADII if _shared_bytes(r, filter) <= limit), default=0)


@dataclass(frozen=True)
class KernelLaunch:
    """One launch of ``fair_preprocess``: grid (tiles x, tiles y, batch) blocks of ``block`` threads,
    ``shared_bytes`` of dynamic shared memory, and the kernel's arguments in signature order with the
    ctypes type of each (the form cuLaunchKernel takes). The CPU emulation in the tests uses it too."""

    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_bytes: int
    values: tuple
    types: tuple


def kernel_launch(plan: HighpassPlan, src: "DeviceFrames", highpass_ptr: int, colour_ptr: int) -> KernelLaunch:
    """The launch that pre-processes ``src`` into the two output buffers (device addresses)."""
    tiles = -(-plan.image_size // TILE)
    values = (src.ptr, src.height, src.width, src.channels, src.row_pitch, src.image_pitch, src.offsets,
              highpass_ptr, colour_ptr, float(plan.centre))
    types = (ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong,
             ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float)
    return KernelLaunch((tiles, tiles, src.batch), (THREADS, 1, 1), shared_bytes(plan), values, types)


@dataclass(frozen=True)
class DeviceFrames:
    """A batch of uint8 frames already in device memory.

    ptr: device address of frame 0, row 0. batch, height, width: counts/pixels. channels: 3 (BGR) or 1.
    row_pitch: bytes between rows (>= width * channels). image_pitch: bytes between frames
    (>= row_pitch * height). offsets: 0, or the device address of ``batch`` int64 byte offsets from
    ``ptr``, one per item, that replace ``b * image_pitch`` (items are then crops of larger frames:
    ``tile_items`` makes them).
    """

    ptr: int
    batch: int
    height: int
    width: int
    channels: int
    row_pitch: int
    image_pitch: int
    offsets: int = 0

    @classmethod
    def from_cuda_array(cls, array) -> "DeviceFrames":
        """From a (B, H, W, 3) / (B, H, W) uint8 object with ``__cuda_array_interface__`` (strided rows ok)."""
        iface = getattr(array, "__cuda_array_interface__", None)
        if iface is None:
            raise KernelError(f"expected a device array with __cuda_array_interface__; found {type(array).__name__}.")
        shape, typestr = tuple(iface["shape"]), iface["typestr"]
        if typestr != "|u1" or len(shape) not in (3, 4):
            raise KernelError(f"device frames must be uint8 (B, H, W, 3) or (B, H, W); found {typestr} {shape}.")
        channels = shape[3] if len(shape) == 4 else 1
        strides = iface.get("strides") or tuple(int(np.prod(shape[i + 1:])) for i in range(len(shape)))
        if strides[2] != channels or (len(shape) == 4 and strides[3] != 1):
            raise KernelError(f"device frame pixels must be packed (strides[2] == {channels}); found strides {strides}.")
        return cls(int(iface["data"][0]), shape[0], shape[1], shape[2], channels, strides[1], strides[0])

    def validate(self) -> None:
        """Raise KernelError naming the bad field, expected and found values."""
        problems = []
        if self.channels not in (1, 3):
            problems.append(f"channels must be 3 (BGR) or 1 (gray); found {self.channels}")
        if not (2 <= self.height <= MAX_FRAME_SIDE and 2 <= self.width <= MAX_FRAME_SIDE):
            problems.append(f"height and width must be in 2..{MAX_FRAME_SIDE}; found {self.height}x{self.width}")
        if self.batch < 1:
            problems.append(f"batch must be >= 1; found {self.batch}")
        if self.row_pitch < self.width * self.channels:
            problems.append(f"row_pitch must be >= width*channels = {self.width * self.channels} bytes; found {self.row_pitch}")
        if self.batch > 1 and not self.offsets and self.image_pitch < self.row_pitch * self.height:
            problems.append(f"image_pitch must be >= row_pitch*height = {self.row_pitch * self.height} bytes; found {self.image_pitch}")
        if not self.ptr:
            problems.append("ptr is NULL")
        if problems:
            raise KernelError("bad device frames: " + "; ".join(problems) + ".")


def tile_offsets(frames: DeviceFrames, crops: Sequence[tuple[int, int]], tile: int) -> np.ndarray:
    """(frames.batch * len(crops),) int64 byte offsets from ``frames.ptr`` of every tile of every frame,
    frame by frame, tiles in ``crops`` order ((y, x) top-left corners, ``tiling.TileLayout.crops``).

    Raises KernelError naming the first tile that does not lie inside the frames."""
    for y, x in crops:
        if not (0 <= y <= frames.height - tile and 0 <= x <= frames.width - tile):
            raise KernelError(f"tile at (y={y}, x={x}) of {tile} x {tile} px does not fit {frames.height} x "
                              f"{frames.width} frames; the tile layout belongs to another frame size.")
    within = np.array([y * frames.row_pitch + x * frames.channels for y, x in crops], np.int64)
    return (np.arange(frames.batch, dtype=np.int64)[:, None] * frames.image_pitch + within[None, :]).ravel()


def tile_items(frames: DeviceFrames, tile: int, offsets_ptr: int, count: int) -> DeviceFrames:
    """The ``count`` tiles of ``frames`` as one batch for the kernel: ``tile`` x ``tile`` items at the
    offsets stored at ``offsets_ptr`` (from ``tile_offsets``), rows still ``frames.row_pitch`` apart."""
    return replace(frames, batch=count, height=tile, width=tile, offsets=offsets_ptr)


def _output_pointer(out, shape: tuple[int, ...], half: bool, name: str) -> int:
    if isinstance(out, (int, np.integer)) and not isinstance(out, bool):
        return int(out)
    iface = getattr(out, "__cuda_array_interface__", None)
    if iface is None:
        raise KernelError(f"{name} must be a device pointer (int) or a device array; found {type(out).__name__}.")
    typestr = "<f2" if half else "<f4"
    if tuple(iface["shape"]) != shape or iface["typestr"] != typestr:
        raise KernelError(f"{name} must be {typestr} {shape}; found {iface['typestr']} {tuple(iface['shape'])}.")
    strides = iface.get("strides")
    contiguous = tuple(int(np.prod(shape[i + 1:])) * (2 if half else 4) for i in range(len(shape)))
    if strides is not None and tuple(strides) != contiguous:
        raise KernelError(f"{name} must be C-contiguous (strides {contiguous}); found {tuple(strides)}.")
    return int(iface["data"][0])


class FusedPreprocessor:
    """Owns the compiled kernel on one GPU (primary context, module, staging buffer). Context manager.

    cfg: the model's PreprocessConfig (ConfigError if the filter has no compact kernel, e.g. ideal).
    half: FP16 outputs if True, else FP32. device: CUDA device ordinal.
    Raises GpuUnavailableError when cuda-python, the driver or the device is missing.
    """

    def __init__(self, cfg: PreprocessConfig, half: bool = False, device: int = 0) -> None:
        self.cfg, self.half, self.plan = cfg, half, plan_highpass(cfg)
        self._driver, _ = import_cuda()
        self._ctx = self._module = None
        self._buffers: dict[str, tuple[int, int]] = {}  # staging name -> (device address, bytes)
        self._offsets_host = np.empty(0, np.int64)  # kept alive until its copy has been enqueued
        drv = self._driver
        try:
            check(drv.cuInit(0), "cuInit")
        except (RuntimeError, OSError) as exc:  # cuda-pathfinder raises when libcuda.so is absent
            raise GpuUnavailableError(f"no NVIDIA driver found ({exc}); the CPU path is fair_edge.preprocess.") from exc
        except KernelError as exc:
            raise GpuUnavailableError(f"CUDA driver unusable: {exc} The CPU path is fair_edge.preprocess.") from exc
        count = check(drv.cuDeviceGetCount(), "cuDeviceGetCount")
        if not 0 <= device < count:
            raise GpuUnavailableError(f"CUDA device {device} requested; found {count} device(s).")
        self._device = check(drv.cuDeviceGet(device), "cuDeviceGet")
        self._ctx = check(drv.cuDevicePrimaryCtxRetain(self._device), "cuDevicePrimaryCtxRetain")
        try:
            self._load()
        except BaseException:
            self.close()
            raise

    def _attribute(self, name: str) -> int:
        attr = getattr(self._driver.CUdevice_attribute, name)
        return check(self._driver.cuDeviceGetAttribute(attr, self._device), "cuDeviceGetAttribute")

    def _load(self) -> None:
        drv = self._driver
        check(drv.cuCtxSetCurrent(self._ctx), "cuCtxSetCurrent")
        major = self._attribute("CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR")
        minor = self._attribute("CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR")
        self.arch = f"sm_{major}{minor}"
        limit = self._attribute("CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN")
        if shared_bytes(self.plan) > limit:  # a plan with a smaller radius, or a ConfigError naming cutoffs that fit
            self.plan = plan_highpass(self.cfg, max_radius=largest_radius(limit, self.plan.filter))
        binary = cached_compile(kernel_source(), "preprocess_kernel.cu", self.arch, compile_options(self.plan, self.half))
        self._module = check(drv.cuModuleLoadData(binary), "cuModuleLoadData")
        self._function = check(drv.cuModuleGetFunction(self._module, KERNEL_NAME.encode()), "cuModuleGetFunction")
        self._smem = shared_bytes(self.plan)
        if self._smem > DEFAULT_SMEM:
            attr = drv.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
            check(drv.cuFuncSetAttribute(self._function, attr, self._smem), "cuFuncSetAttribute")
        for symbol, taps in ((b"c_row", self.plan.row_taps), (b"c_col", self.plan.col_taps)):
            dptr, size = check(drv.cuModuleGetGlobal(self._module, symbol), "cuModuleGetGlobal")
            data = np.ascontiguousarray(taps, dtype=np.float32).ravel()
            if data.nbytes > size:
                raise KernelError(f"{symbol.decode()} holds {size} bytes; the plan needs {data.nbytes}.")
            if data.nbytes:
                check(drv.cuMemcpyHtoD(dptr, data.ctypes.data, data.nbytes), "cuMemcpyHtoD")

    def _upload(self, name: str, array: np.ndarray, stream) -> int:
        """Copy ``array`` (C-contiguous) into the staging buffer ``name`` on ``stream``, growing it as
        needed; returns its device address."""
        ptr, size = self._buffers.get(name, (0, 0))
        if array.nbytes > size:
            if ptr:
                check(self._driver.cuMemFree(ptr), "cuMemFree")
                self._buffers.pop(name)
            ptr = int(check(self._driver.cuMemAlloc(array.nbytes), "cuMemAlloc"))
            self._buffers[name] = (ptr, array.nbytes)
        check(self._driver.cuMemcpyHtoDAsync(ptr, array.ctypes.data, array.nbytes, stream), "cuMemcpyHtoDAsync")
        return ptr

    def _stage(self, frames: np.ndarray, stream) -> DeviceFrames:
        """Copy a host batch into the frame staging buffer on ``stream``; returns its DeviceFrames."""
        if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim not in (3, 4) \
                or (frames.ndim == 4 and frames.shape[3] not in (1, 3)):
            found = f"{frames.dtype} {frames.shape}" if isinstance(frames, np.ndarray) else type(frames).__name__
            raise KernelError(f"host frames must be a uint8 array (B, H, W, 3) BGR or (B, H, W) gray; found {found}.")
        if not frames.flags.c_contiguous:
            raise KernelError("host frames must be C-contiguous (np.ascontiguousarray, or a pinned buffer); "
                              f"found strides {frames.strides}.")
        ptr = self._upload("frames", frames, stream)
        b, h, w = frames.shape[:3]
        c = frames.shape[3] if frames.ndim == 4 else 1
        return DeviceFrames(ptr, b, h, w, c, w * c, h * w * c)

    def run(self, frames, highpass_out, colour_out, stream=0) -> None:
        """Enqueue pre-processing of one batch on ``stream`` (see the module docstring for the layouts)."""
        src = self._source(frames, stream)
        self._launch(src, highpass_out, colour_out, stream)

    def run_tiles(self, frames, crops: Sequence[tuple[int, int]], tile: int, highpass_out, colour_out,
                  stream=0) -> None:
        """Enqueue crop + resize of every ``tile`` x ``tile`` tile at ``crops`` ((y, x) corners) of every
        frame, in one launch: the frames are uploaded whole, once. Outputs hold B * len(crops) items,
        frame by frame, tiles in ``crops`` order (what ``tiling.FrameTiler.split`` cuts on the host)."""
        src = self._source(frames, stream)
        self._offsets_host = tile_offsets(src, crops, tile)
        offsets = self._upload("offsets", self._offsets_host, stream)
        self._launch(tile_items(src, tile, offsets, len(self._offsets_host)), highpass_out, colour_out, stream)

    def _source(self, frames, stream) -> DeviceFrames:
        if self._module is None:
            raise KernelError("FusedPreprocessor is closed; create a new one.")
        check(self._driver.cuCtxSetCurrent(self._ctx), "cuCtxSetCurrent")
        return frames if isinstance(frames, DeviceFrames) else self._stage(frames, stream)

    def _launch(self, src: DeviceFrames, highpass_out, colour_out, stream) -> None:
        src.validate()
        s = self.plan.image_size
        hp = _output_pointer(highpass_out, (src.batch, self.plan.channels, s, s), self.half, "highpass_out")
        col = _output_pointer(colour_out, (src.batch, 3, s, s), self.half, "colour_out")
        launch = kernel_launch(self.plan, src, hp, col)
        check(self._driver.cuLaunchKernel(self._function, *launch.grid, *launch.block, launch.shared_bytes, stream,
                                          (launch.values, launch.types), 0), "cuLaunchKernel")

    def close(self) -> None:
        """Free the staging buffers, unload the module, release the primary context. Safe to call twice, from any
        thread: the context is made current first (cuModuleUnload unloads from the current context; a thread that
        retires a swapped-out scorer may never have run the kernel)."""
        drv = self._driver
        calls = [("cuCtxSetCurrent", lambda: drv.cuCtxSetCurrent(self._ctx) if self._ctx else (0,))]
        calls += [("cuMemFree", lambda ptr=ptr: drv.cuMemFree(ptr)) for ptr, _ in self._buffers.values()]
        calls += [("cuModuleUnload", lambda: drv.cuModuleUnload(self._module) if self._module else (0,)),
                  ("cuDevicePrimaryCtxRelease", lambda: drv.cuDevicePrimaryCtxRelease(self._device) if self._ctx else (0,))]
        for what, call in calls:
            try:
                check(call(), what)
            except KernelError as exc:
                log.warning("FusedPreprocessor.close: %s", exc)
        self._buffers, self._module, self._ctx = {}, None, None

    def __enter__(self) -> "FusedPreprocessor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


