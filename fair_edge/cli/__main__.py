"""``python -m fair_edge.cli``: what torchrun starts on every rank (``fair_edge.training.ddp``)."""

from fair_edge.cli.root import main

main()
