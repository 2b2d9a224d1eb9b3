"""Bench room: ``fair-edge bench``. Sustained frames/s and capture -> verdict latency of one bundle
per batch size (``run``), its settings and command-line parsers (``settings``) and the per-stage
breakdown of the CPU path (``stages``). It times the same runtime backends and inspection loop the
station runs; it trains nothing and drives no line."""
