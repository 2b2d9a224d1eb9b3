"""Demo room: ``fair-edge demo``, a complete station without hardware. Its settings (``config``:
data, model, steps, false-reject target) and the run itself (``run``: train or reuse a model,
evaluate, build the bundle, replay a conveyor through the station with a simulated PLC)."""
