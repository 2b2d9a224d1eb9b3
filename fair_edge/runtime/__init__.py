"""Runtime room: what runs a built bundle. Backends behind one contract, named input tensors in and
``anomaly_map`` / ``score`` out (``backends``: PyTorch on CPU or CUDA graphs, and selection; ``ort``:
ONNX Runtime; ``openvino``; ``tensorrt``), the CPU pre-processing that feeds them (``preprocess_cpu``;
the fused CUDA kernel's host side is ``fair_edge.export.preprocess_gpu``), ``torch.compile`` for the
PyTorch backends (``compiled``), one score from several bundles (``fusion``) and the switch that swaps a
running station's model between batches (``hotswap``). Bundles are read and verified by
``fair_edge.export.bundle``; the inspection loop that calls these is ``fair_edge.station.inspector``."""
