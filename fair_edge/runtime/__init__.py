"""Runtime room: what runs a built bundle. Backends behind one contract, named input tensors in and
``anomaly_map`` / ``score`` out (``backends``: the contract, ONNX Runtime and one bundle's frames ->
scores; ``pytorch``: PyTorch on CPU or CUDA graphs and the GPU pre-processing; ``openvino``;
``tensorrt``; ``selection``: which one runs). The CPU pre-processing that feeds them is
``fair_edge.preprocess.CpuPipeline``; the GPU one is the fused CUDA kernel (``preprocess_kernel.cu``),
whose host side is here: ``preprocess_gpu`` (the launcher), ``highpass_plan`` (its separable taps),
``nvrtc_build`` (compiles it at run time) and ``fused_mirror`` (its NumPy mirror). ``torch.compile`` for
the PyTorch backends (``compiled``), one score from several bundles (``fusion``) and the switch that swaps
a running station's model between batches (``hotswap``). Bundles are read and verified by
``fair_edge.export.bundle``; the inspection loop that calls these is ``fair_edge.station.inspector``."""
