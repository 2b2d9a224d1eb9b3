"""``python -m fair_edge.cli``: what torchrun starts on every rank (``fair_edge.training.ddp``); the console script's
``main``, so a Ctrl-C during the imports is one line here too."""

from fair_edge.cli import main

main()
