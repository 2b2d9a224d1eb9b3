"""Training room: everything between a folder of images and a checkpoint with its report. Datasets
(``data``), the training loop on one process or across DDP ranks (``train``, ``ddp``) and its exact
``--resume`` (``resume``), evaluation with its metrics (``evaluate``, ``metrics``, ``inference``),
settings chosen from normal images only (``tune``, ``proxy_defects``), where runs live on disk
(``runs``) and frames brought back from the line for the next training (``collect``). A family's own
training step lives with the family in ``fair_edge.models``; nothing here runs the line."""
