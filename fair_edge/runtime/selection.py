"""Which backend runs a bundle: ``select_backend(bundle, name)``, by name or ``auto`` (TensorRT with an engine
built for this GPU, then PyTorch on CUDA with CUDA graphs, then the fastest installed CPU engine, timed on
one frame), with the reason it was chosen. ``BACKEND_NAMES`` is the one list ``--backend`` and the station
file accept. The backends themselves: ``backends`` (the contract and ONNX Runtime), ``pytorch``,
``tensorrt``, ``openvino``, each imported only when chosen.

Each backend's scorer carries the threshold calibrated on the graph it runs (``graph_threshold``, None: the
bundle's own): the CPU engines run an INT8 bundle's CPU graph, ONNX Runtime with ``cpu_threshold`` and OpenVINO with
the one the build calibrated on OpenVINO's own scores of it (``Bundle.cpu_openvino``; its int8 kernels score that
graph up to 0.9 % apart: ``openvino_graph``); on FP32/FP16 graphs both engines share the bundle's (2.1e-6 apart);
the PyTorch backends always run the FP32 weights, so on an FP16/INT8 bundle they carry the FP32 reference graph's
``fp32_threshold``. A bundle built before such a threshold was kept (or, for OpenVINO, where it was not installed)
runs a named backend on the threshold of another graph or engine with a warning saying so; ``auto`` leaves OpenVINO
out there (``uncalibrated_openvino``, said once in the log). Likewise for the held-out normal maps a station with
``decision.roi`` calibrates its threshold on (``station.decision.normal_maps_path``): OpenVINO's own
(``openvino_normal_maps.npy``); a bundle that keeps OpenVINO's thresholds but not its maps (``openvino_without_maps``)
is left out of ``auto`` (which cannot tell whether the station sets an ROI: one scorer serves every camera of a bundle)
and a named OpenVINO with an ROI is warned on (``warn_openvino_without_maps``). TensorRT runs the precision's graph, in
chunks of at most the engine profile's batch.

``auto`` also leaves out a CPU engine whose score of a grey frame is not ONNX Runtime's (``agrees``: an engine that
runs the graph wrongly), or that raises scoring it (with a warning naming the engine and its error); a named
``openvino`` is refused where it scores so on an INT8 bundle built before bb4c96d (``refuse_unlike_onnxruntime``),
whose CPU graph OpenVINO scores 10-20 x too high."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from fair_edge.calibration.threshold import Threshold
from fair_edge.errors import BundleError, ConfigError, FairEdgeError
from fair_edge.runtime.backends import BundleScorer, CpuPreprocessor, OnnxRuntimeBackend, cpu_graph
from fair_edge.tiling import FrameTiler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendOptions:
    """compile: torch.compile the PyTorch backends (``fair_edge.runtime.compiled``); the others ignore it."""

    compile: bool = False


def _tensorrt(bundle, options: BackendOptions) -> BundleScorer:
    from fair_edge.runtime.pytorch import gpu_preprocessor
    from fair_edge.runtime.tensorrt import TensorRTBackend

    if bundle.engine is None:
        where = "on this machine" if torch.cuda.is_available() else "on the GPU machine that will run it"
        raise ConfigError(f"bundle {bundle.root} has no TensorRT engine; build one with `fair-edge build` {where}.")
    backend = TensorRTBackend.from_bundle(bundle)
    return BundleScorer(backend, gpu_preprocessor(bundle), "TensorRT engine in the bundle",
                        max_batch=engine_batch(bundle, backend.max_batch), backend_name="tensorrt",
                        graph=bundle.onnx_path.name)


def engine_batch(bundle, profile_max: int) -> int:
    """Frames (tiles) per TensorRT call: the engine profile's max batch, at most the bundle's ``max_batch`` (the
    build makes them equal); a larger station batch is split into chunks of this size, never refused."""
    return max(1, min(int(profile_max), int(bundle.max_batch)))


def _torch_cuda(bundle, options: BackendOptions) -> BundleScorer:
    from fair_edge.runtime.pytorch import TorchBackend, gpu_preprocessor

    if not torch.cuda.is_available():
        raise ConfigError("--backend torch-cuda: PyTorch sees no CUDA GPU. Use --backend onnxruntime or torch-cpu.")
    backend = TorchBackend(_weights(bundle), torch.device("cuda"), compile=options.compile)
    return BundleScorer(backend, gpu_preprocessor(bundle),
                         f"PyTorch on CUDA with CUDA graphs{' and torch.compile' if options.compile else ''} (FP32 weights)",
                         fp32_threshold(bundle, "torch-cuda"), backend_name="torch-cuda",
                         graph=bundle.reference_onnx_path.name)


def _torch_cpu(bundle, options: BackendOptions) -> BundleScorer:
    from fair_edge.runtime.pytorch import TorchBackend

    backend = TorchBackend(_weights(bundle), torch.device("cpu"), compile=options.compile)
    return BundleScorer(backend, CpuPreprocessor(bundle.model),
                         f"PyTorch {'torch.compile' if options.compile else 'eager'} on the CPU (FP32 weights)",
                         fp32_threshold(bundle, "torch-cpu"), backend_name="torch-cpu",
                         graph=bundle.reference_onnx_path.name)


def fp32_threshold(bundle, name: str) -> Threshold | None:
    """The threshold of the FP32 weights the PyTorch backend ``name`` runs: None on an FP32 bundle (the bundle's
    threshold is the FP32 graph's), the bundle's ``fp32_threshold`` on an FP16/INT8 one. An FP16/INT8 bundle
    built before that was kept gives None (the station then uses the bundle's threshold, as it did) with a
    warning: that threshold was calibrated on the FP16/INT8 graph, another graph than the one this runs."""
    if bundle.precision == "fp32":
        return None
    if bundle.fp32_threshold is not None or bundle.threshold is None:
        return bundle.fp32_threshold
    hint = f"`{bundle.build_command}`" if bundle.build_command else "`fair-edge build CHECKPOINT --out BUNDLE`"
    log.warning("--backend %s runs the FP32 weights of %s bundle %s, but its threshold %.6g was calibrated on the "
                "%s graph (%s), another graph, and the bundle keeps no threshold of the FP32 graph (built before it "
                "did): its false-reject rate can differ from the %g the build measured. Rebuild the bundle with %s "
                "(it then keeps fp32_threshold for the PyTorch backends), run --backend onnxruntime or tensorrt, or "
                "set decision.threshold.", name, bundle.precision.upper(), bundle.root, bundle.threshold.value,
                bundle.precision.upper(), bundle.onnx_path.name, bundle.threshold.measured_false_reject_rate, hint)
    return None


def _onnxruntime(bundle, options: BackendOptions) -> BundleScorer:
    path, threshold, what = cpu_graph(bundle)
    return BundleScorer(OnnxRuntimeBackend(path, bundle.model.input_names), CpuPreprocessor(bundle.model, host=True),
                         f"ONNX Runtime on the CPU ({what})", threshold, backend_name="onnxruntime", graph=path.name)


def _openvino(bundle, options: BackendOptions) -> BundleScorer:
    from fair_edge.runtime.openvino import OpenVinoBackend

    path, threshold, what = openvino_graph(bundle)
    why = uncalibrated_openvino(bundle)
    if why:
        warn_uncalibrated_openvino(bundle, why)
        what += ", with ONNX Runtime's threshold: none calibrated on OpenVINO"
    return BundleScorer(OpenVinoBackend(path, bundle.model.input_names), CpuPreprocessor(bundle.model, host=True),
                         f"OpenVINO on the CPU ({what})", threshold, backend_name="openvino", graph=path.name)


def openvino_graph(bundle) -> tuple[Path, Threshold | None, str]:
    """(graph, threshold, what) OpenVINO runs: ``cpu_graph``'s graph, and on an INT8 bundle's CPU graph the
    threshold the build calibrated on OpenVINO's own scores of it (``Bundle.cpu_openvino``: OpenVINO's int8 kernels
    score it up to 0.9 % apart from ONNX Runtime's); ``cpu_graph``'s threshold (ONNX Runtime's) where the bundle keeps
    none (``uncalibrated_openvino`` says why). On an FP32/FP16 graph the two engines agree within 2.1e-6 relative
    (``export.build._openvino_thresholds``), inside the threshold's 1e-3 margin: they share the bundle's."""
    path, threshold, what = cpu_graph(bundle)
    own = getattr(bundle, "cpu_openvino", None)
    if getattr(bundle, "cpu_onnx_path", None) is not None and own is not None and own.threshold is not None:
        return path, own.threshold, f"{what}, thresholds calibrated on OpenVINO {own.version}".rstrip()
    return path, threshold, what


def uncalibrated_openvino(bundle) -> str:
    """Why OpenVINO would decide on ``bundle``'s INT8 CPU graph with ONNX Runtime's threshold ("OpenVINO was not
    installed where the bundle was built", "built before ..."); "" when it has its own, or needs none (an FP32/FP16
    bundle, or one without thresholds)."""
    if getattr(bundle, "cpu_onnx_path", None) is None or getattr(bundle, "cpu_threshold", None) is None:
        return ""
    own = getattr(bundle, "cpu_openvino", None)
    if own is not None and own.threshold is not None:
        return ""
    if own is not None and own.missing:
        return own.missing
    return "the bundle was built before fair-edge calibrated one on OpenVINO"


def openvino_without_maps(bundle) -> str:
    """Why a station with ``decision.roi`` would calibrate OpenVINO's ROI threshold of ``bundle``'s INT8 CPU graph on
    ONNX Runtime's held-out normal maps (``cpu_normal_maps.npy``) though the bundle keeps OpenVINO's own thresholds:
    it keeps no maps OpenVINO made (built by fair-edge 4522fb8, before they were kept). "" when it keeps them, when it
    keeps no CPU normal maps (no ROI threshold then, on either engine), or when it has no OpenVINO thresholds at all
    (``uncalibrated_openvino`` says why, and covers the maps too)."""
    own = getattr(bundle, "cpu_openvino", None)
    if own is None or own.threshold is None or own.normal_maps_path is not None:
        return ""
    if getattr(bundle, "cpu_normal_maps_path", None) is None:
        return ""
    return "the bundle was built before fair-edge kept the held-out normal maps OpenVINO made of that graph"


def openvino_left_out(bundle) -> str:
    """Why ``auto`` does not time OpenVINO on ``bundle``, in words ("no threshold calibrated on it for this bundle
    (WHY)", or no normal maps of its own for an ROI's threshold); "" when it times it."""
    why = uncalibrated_openvino(bundle)
    if why:
        return f"no threshold calibrated on it for this bundle ({why})"
    why = openvino_without_maps(bundle)
    if why:
        return ("no held-out normal maps of its own for the threshold a station with decision.roi calibrates, only "
                f"ONNX Runtime's ({why})")
    return ""


def warn_openvino_without_maps(bundle, why: str) -> None:
    """Warn that OpenVINO's ROI threshold on ``bundle`` is being calibrated on ONNX Runtime's held-out normal maps
    (``why``: ``openvino_without_maps``), what that risks and the fixes (``station.decision.normal_maps_path``)."""
    hint = f"`{bundle.build_command}`" if bundle.build_command else "`fair-edge build CHECKPOINT --int8 --out BUNDLE`"
    log.warning("decision.roi with --backend openvino on bundle %s: the ROI threshold is calibrated on ONNX Runtime's "
                "held-out normal maps of its int8 CPU graph (%s), not OpenVINO's: %s. OpenVINO's int8 kernels score "
                "that graph up to about 1 %% apart, so normal parts near the threshold can be NG here. Rebuild the "
                "bundle with %s where OpenVINO is installed (it then keeps OpenVINO's maps), run --backend onnxruntime "
                "or auto, or set decision.threshold.", bundle.root, bundle.cpu_normal_maps_path.name, why, hint)


def warn_uncalibrated_openvino(bundle, why: str) -> None:
    """Warn that a named OpenVINO decides on ``bundle``'s INT8 CPU graph with ONNX Runtime's threshold (``why``:
    ``uncalibrated_openvino``), what that risks and the fixes."""
    hint = f"`{bundle.build_command}`" if bundle.build_command else "`fair-edge build CHECKPOINT --int8 --out BUNDLE`"
    log.warning("--backend openvino runs the int8 CPU graph %s of bundle %s on its threshold %.6g, calibrated on ONNX "
                "Runtime's scores of it: the bundle keeps none calibrated on OpenVINO (%s). OpenVINO's int8 kernels "
                "score that graph up to about 1 %% apart, so normal parts near the threshold can be NG here and its "
                "false-reject rate can differ from the %g the build measured (with decision.roi, its ROI threshold is "
                "calibrated on ONNX Runtime's held-out normal maps too). Rebuild the bundle with %s where "
                "OpenVINO is installed (pip install openvino; the build then calibrates OpenVINO's own), run --backend "
                "onnxruntime or auto, or set decision.threshold.", bundle.cpu_onnx_path.name, bundle.root,
                bundle.cpu_threshold.value, why, bundle.cpu_threshold.measured_false_reject_rate, hint)


# bundle folders whose OpenVINO ``auto`` left out for want of its own threshold, said in the log (once each)
_OPENVINO_LEFT_OUT_SAID: set[Path] = set()


def left_out_uncalibrated(bundle) -> list[str]:
    """The ``CPU_CANDIDATES`` ``auto`` does not time on ``bundle``: ["openvino"] where it has no threshold of its own
    on the INT8 CPU graph (``uncalibrated_openvino``), or no normal maps of its own for an ROI's threshold
    (``openvino_without_maps``: left out with or without an ROI, which ``auto`` does not see), said once per bundle in
    the log; else []."""
    why = uncalibrated_openvino(bundle)
    maps_why = "" if why else openvino_without_maps(bundle)
    if not why and not maps_why:
        return []
    if bundle.root not in _OPENVINO_LEFT_OUT_SAID:
        _OPENVINO_LEFT_OUT_SAID.add(bundle.root)
        if why:
            log.warning("auto: OpenVINO is not used for bundle %s: its int8 CPU graph's threshold was calibrated on "
                        "ONNX Runtime only (%s), and OpenVINO scores that graph up to about 1 %% apart. Rebuild the "
                        "bundle where OpenVINO is installed to let auto time it.", bundle.root, why)
        else:
            log.warning("auto: OpenVINO is not used for bundle %s: it keeps OpenVINO's thresholds of its int8 CPU "
                        "graph but only ONNX Runtime's held-out normal maps (%s), on which a station with "
                        "decision.roi would calibrate OpenVINO's ROI threshold, and OpenVINO scores that graph up to "
                        "about 1 %% apart. Rebuild the bundle where OpenVINO is installed to let auto time it.",
                        bundle.root, maps_why)
    return ["openvino"]


def _weights(bundle):
    if bundle.weights_path is None:
        raise BundleError(f"bundle {bundle.root} holds no PyTorch weights; rebuild it with `fair-edge build`.")
    return bundle.weights_path


BACKENDS: dict[str, Callable[..., BundleScorer]] = {
    "tensorrt": _tensorrt,
    "torch-cuda": _torch_cuda,
    "torch-cpu": _torch_cpu,
    "onnxruntime": _onnxruntime,
    "openvino": _openvino,
}
BACKEND_NAMES = ("auto", *BACKENDS)  # what --backend and the station file's backend accept: the one list
# CPU engines 'auto' times at start-up; torch-cpu is left out: the slowest on the CPU in every measurement.
CPU_CANDIDATES = ("onnxruntime", "openvino")
UNAVAILABLE = (FairEdgeError, ImportError, OSError, RuntimeError)


def _first_sentence(exc: Exception) -> str:
    """The first sentence of ``exc``'s message, without its full stop (the reasons are joined with "; ")."""
    return str(exc).split(". ")[0].rstrip(".")


def probe(scorer: BundleScorer, size: int, repeats: int = 3) -> tuple[float, float]:
    """(median milliseconds of pre-processing + inference of one (size, size, 3) grey frame after one warm-up,
    that frame's image score)."""
    frame = np.full((size, size, 3), 128, np.uint8)
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        _, scores = scorer.infer_frames([frame])
        if i:
            times.append(1000.0 * (time.perf_counter() - start))
    return float(np.median(times)), float(scores[0])


def agrees(score: float, reference: float, threshold: Threshold | None) -> bool:
    """Whether an engine's score of the probe frame is the reference engine's, as two int8 engines running one
    graph may differ: within 5 % of the larger of the reference score and the graph's threshold. A guard against an
    engine that runs the graph wrongly (OpenVINO scored a pre-bb4c96d graph 10-20 x high), not a calibration
    tolerance: 0.9 % apart already moves normals across a threshold, so each engine decides with thresholds calibrated
    on its own scores (``openvino_graph``)."""
    scale = max(abs(reference), abs(threshold.value) if threshold is not None else 0.0)
    return abs(score - reference) <= 0.05 * scale + 1e-6


def fastest_cpu(bundle, options: BackendOptions = BackendOptions()) -> BundleScorer:
    """The fastest of the installed ``CPU_CANDIDATES`` on this machine (timed on one frame), saying why. OpenVINO on
    an INT8 CPU graph without a threshold (or normal maps) calibrated on it is not tried (``left_out_uncalibrated``).
    An engine that loads the bundle but cannot score ``probe``'s frame, or scores it unlike the first engine that can
    (ONNX Runtime, ``agrees``), is left out with a warning naming it and why."""
    scorers, notes = [], []
    uncalibrated = left_out_uncalibrated(bundle)
    for name in CPU_CANDIDATES:
        if name in uncalibrated:
            continue
        try:
            scorers.append(BACKENDS[name](bundle, options))
        except UNAVAILABLE as exc:
            notes.append(f"{name}: {_first_sentence(exc)}")
    if not scorers:
        raise ConfigError(f"no CPU backend could load {bundle.root}: {'; '.join(notes)}.")
    skipped = [f"{name} left out: {openvino_left_out(bundle)}" for name in uncalibrated]
    if len(scorers) == 1:
        only = (f"the only CPU engine calibrated for this bundle; {'; '.join(skipped)}" if skipped else
                "the only CPU engine installed")
        return replace(scorers[0], reason=f"{scorers[0].reason}, {only}")
    probed, failed = probe_all(scorers, bundle)
    failed += skipped
    if not probed:
        raise ConfigError(f"no CPU backend could run {bundle.root}: {'; '.join(failed)}. Rebuild the bundle with "
                          f"`{bundle.build_command or 'fair-edge build CHECKPOINT --out BUNDLE'}`.")
    why = "".join(f"; {note}" for note in failed)
    if len(probed) == 1:
        only = probed[0][2]
        return replace(only, reason=f"{only.reason}, the only CPU engine that runs this bundle{why}")
    reference = probed[0]   # ONNX Runtime: the engine the build calibrated the graph's threshold on
    left_out = [p for p in probed[1:] if not agrees(p[1], reference[1], reference[2].graph_threshold)]
    timed = sorted((p for p in probed if p not in left_out), key=lambda p: p[0])
    for _, _, loser in [*timed[1:], *left_out]:
        loser.backend.close()
    best = timed[0][2]
    times = ", ".join(f"{c.backend.name} {ms:.1f} ms" for ms, _, c in sorted(probed, key=lambda p: p[0]))
    unlike = "".join(f"; {c.backend.name} left out: it scores a grey frame {score:.4g}, {reference[2].backend.name} "
                     f"{reference[1]:.4g}, more than the 5 % two engines of one graph may differ"
                     for _, score, c in left_out)
    for _, _, c in left_out:
        log.warning("auto: %s scores unlike %s on this bundle (%s); it is not used", c.backend.name,
                    reference[2].backend.name, unlike.lstrip("; "))
    return replace(best, reason=f"{best.reason}, the fastest CPU engine here (one frame: {times}{why}{unlike})")


def probe_all(scorers: list[BundleScorer], bundle) -> tuple[list[tuple[float, float, BundleScorer]], list[str]]:
    """(``probe``'s (milliseconds, score, scorer) of each scorer that scores the grey frame, in order; a note
    "NAME left out: it cannot score a grey frame (ERROR)" for each that raises instead). A scorer that raises is
    closed and logged as a warning: an engine that loads a graph but cannot run it (OpenVINO 2026.4 refused the
    GatherElements of a score_shifts=2 PatchCore graph exported before the fix) must not stop ``auto``. Any
    exception counts: each engine raises its own types (ONNX Runtime's derive from Exception only)."""
    probed, failed = [], []
    for scorer in scorers:
        try:
            probed.append((*probe(scorer, bundle.image_size), scorer))
        except Exception as exc:  # noqa: BLE001 - the engine's own error types; named in the note and the log
            scorer.backend.close()
            error = engine_error(exc)
            log.warning("auto: %s cannot score a grey frame of bundle %s (%s); it is not used, the other CPU engines "
                        "are timed", scorer.backend.name, bundle.root, error)
            failed.append(f"{scorer.backend.name} left out: it cannot score a grey frame ({error})")
    return probed, failed


def engine_error(exc: Exception, limit: int = 400) -> str:
    """``exc`` as one line of at most ``limit`` characters: its type, the first line of its message that is not an
    "Exception from FILE:LINE:" location (OpenVINO starts its messages with several) and, where the message goes on,
    its last line (OpenVINO's says what was wrong there: "Shapes {4,16} and {1,1} are not consistent, ...")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    told = [line for line in lines if not line.startswith("Exception from ")] or lines or [""]
    text = told[0] if len(told) == 1 else f"{told[0]} ... {told[-1]}"
    return f"{type(exc).__name__}: {text}"[:limit] if text else type(exc).__name__


def refuse_unlike_onnxruntime(bundle, scorer: BundleScorer) -> BundleScorer:
    """``scorer`` (OpenVINO, named by --backend or the station file) unless it scores the bundle's int8 CPU graph
    otherwise than ONNX Runtime, on which the graph's threshold was calibrated. Only a graph built before fair-edge
    bb4c96d is in doubt: its average pool reads a Q/DQ copy of its input (``openvino.dequantised_pools``), which
    OpenVINO 2026.4 scores 10-20 x too high, so every part is NG. Such a graph alone is run on both engines on
    ``probe``'s grey frame; scores that ``agrees`` would not accept (the check ``auto`` makes) are a BundleError
    naming the bundle, both scores and the fix: rebuild it (its ``build_command``), or run ONNX Runtime.

    Cost on a correct bundle (an FP32/FP16 one, or an INT8 one built since): a scan of the int8 graph's nodes,
    about 2 ms for a 1.3 MB PatchCore graph; the probe (an ONNX Runtime session and two frames per engine, about
    0.1 s on that graph) runs only on a graph built before."""
    from fair_edge.runtime.openvino import dequantised_pools

    pools = dequantised_pools(bundle.cpu_onnx_path) if bundle.cpu_onnx_path is not None else []
    if not pools:
        return scorer
    try:
        reference = BACKENDS["onnxruntime"](bundle, BackendOptions())
        try:
            score, expected = probe(scorer, bundle.image_size, 1)[1], probe(reference, bundle.image_size, 1)[1]
        finally:
            reference.backend.close()
    except BaseException:
        scorer.backend.close()
        raise
    if agrees(score, expected, reference.graph_threshold):
        log.info("%s: its int8 CPU graph predates bb4c96d (%s reads a Q/DQ copy), but OpenVINO scores it like "
                 "ONNX Runtime here (grey frame %.4g and %.4g)", bundle.root, pools[0], score, expected)
        return scorer
    scorer.backend.close()
    raise BundleError(unlike_onnxruntime_message(bundle, scorer.graph, pools[0], score, expected))


def refuse_unrunnable(bundle, scorer: BundleScorer) -> BundleScorer:
    """``scorer`` (OpenVINO, named by --backend or the station file) once it has scored one grey frame of the bundle's
    size; an engine that loads the graph but cannot run it is a BundleError naming the bundle, the engine's error and
    the fixes, at start, instead of a station whose every frame fails ("inference failed") until it faults. The
    build checks its graphs on ONNX Runtime only: OpenVINO 2026.4 refused the GatherElements of a score_shifts >= 2
    PatchCore graph exported before 649a811. Cost: one frame's inference at start."""
    frame = np.full((bundle.image_size, bundle.image_size, 3), 128, np.uint8)
    try:
        scorer.infer_frames([frame])
    except Exception as exc:  # noqa: BLE001 - the engine's own error types; named in the message
        scorer.backend.close()
        rebuild = f"`{bundle.build_command or 'fair-edge build CHECKPOINT --out BUNDLE'}`"
        raise BundleError(f"backend openvino: OpenVINO loads bundle {bundle.root} but cannot score a frame with it "
                          f"({engine_error(exc)}). Rebuild the bundle with {rebuild} (graphs exported since 649a811 "
                          "run on OpenVINO), or run it with --backend onnxruntime (station file: backend: "
                          "onnxruntime) or auto.") from None
    return scorer


def unlike_onnxruntime_message(bundle, graph: str, pool: str, score: float, expected: float) -> str:
    """Why OpenVINO is refused on ``bundle``: its int8 CPU graph ``graph``, whose AveragePool ``pool`` reads a Q/DQ
    copy, scores ``probe``'s grey frame ``score`` on OpenVINO and ``expected`` on ONNX Runtime."""
    threshold = bundle.cpu_threshold
    calibrated = f"its threshold {threshold.value:.4g} was" if threshold is not None else "its threshold was"
    rebuild = f"`{bundle.build_command or 'fair-edge build CHECKPOINT --int8 --out BUNDLE'}`"
    return (f"backend openvino: OpenVINO scores the int8 CPU graph {graph} of bundle {bundle.root} unlike ONNX "
            f"Runtime, on which {calibrated} calibrated: a grey frame scores {score:.4g} on OpenVINO and "
            f"{expected:.4g} on ONNX Runtime (they differ by {abs(score - expected):.4g}, more than the 5 % two "
            "engines may), so its parts would be judged on another scale (every part NG when OpenVINO scores "
            f"higher). The graph's average pool {pool} reads a quantised copy of its input: the bundle was built "
            "before fair-edge bb4c96d, whose build makes that pool read the float tensor "
            "(calibration.int8_cpu.pool_float_taps), which OpenVINO scores as ONNX Runtime does. Rebuild the bundle "
            f"with {rebuild}, or run it with --backend onnxruntime (station file: backend: onnxruntime) or auto.")


def select_backend(bundle, name: str = "auto", options: BackendOptions = BackendOptions()) -> BundleScorer:
    """The backend ``name`` for ``bundle``; 'auto' tries TensorRT, PyTorch CUDA, then the fastest CPU engine.
    The scorer carries the bundle's tiling (``BundleScorer.infer_frames``), and its batch limit: TensorRT's
    engine profile always, the bundle's ``max_batch`` tiles per call for a tiled bundle. OpenVINO, named or picked,
    warns once when it is not the release the bundle's OpenVINO thresholds were calibrated on
    (``openvino.warn_other_openvino``)."""
    scorer = _select(bundle, name, options)
    if scorer.backend.name == "openvino":
        from fair_edge.runtime.openvino import warn_other_openvino

        warn_other_openvino(bundle)
    if bundle.preprocess.tiling is None:
        return scorer
    step = min(scorer.max_batch or bundle.max_batch, bundle.max_batch)
    return replace(scorer, tiler=FrameTiler(bundle.preprocess.tiling, bundle.image_size), max_batch=step)


def _select(bundle, name: str, options: BackendOptions) -> BundleScorer:
    if name != "auto":
        if name not in BACKENDS:
            raise ConfigError(f"backend must be auto or one of {', '.join(BACKENDS)}; found {name!r}.")
        scorer = BACKENDS[name](bundle, options)
        return refuse_unrunnable(bundle, refuse_unlike_onnxruntime(bundle, scorer)) if name == "openvino" else scorer
    reasons = []
    for candidate in ("tensorrt", "torch-cuda"):
        try:
            scorer = BACKENDS[candidate](bundle, options)
            return replace(scorer, reason=f"auto: {scorer.reason}")
        except UNAVAILABLE as exc:
            reasons.append(f"{candidate}: {_first_sentence(exc)}")
    scorer = fastest_cpu(bundle, options)
    return replace(scorer, reason=f"auto: {scorer.reason} ({'; '.join(reasons)})")
