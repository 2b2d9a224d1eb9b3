"""Station room: the inspection loop and what wires it to the line. The station file and its
generated reference (``config``, ``doc``), the loop from captured frames to verdicts (``inspector``),
the fault output (``faults``) and ``run``, which builds a running station from its settings: bundle
and backend (``fair_edge.runtime``), camera (``fair_edge.cameras``), reject scheduling, sinks,
recorder and metrics (``fair_edge.line``) and the console (``fair_edge.console``)."""
