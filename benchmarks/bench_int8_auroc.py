"""INT8 AUROC change for the LGFDR (and FAIR) checkpoints trained by `bench_lgfdr.py --out /tmp/x/bench-lgfdr-240`
(run as written: that folder is hard-coded). Usage: python benchmarks/int8_auroc_lgfdr_run.py lgfdr_pretrained fair_w32"""
import sys, time
from pathlib import Path
from fair_edge.checkpoint import load_checkpoint
from fair_edge.data import load_dataset, read_image
from fair_edge.export.accuracy import compare_bundle_precisions
from fair_edge.export.build import BuildOptions, build_bundle
split = load_dataset("elpv:mono")
labels = [s.label for s in split.test]
test = [read_image(s.path) for s in split.test]
calib = [read_image(s.path) for s in split.train[:64]]
for name in sys.argv[1:]:
    t = time.time()
    ck = load_checkpoint(Path("/tmp/x/bench-lgfdr-240") / name / "final.pt")
    b = build_bundle(ck, Path("/tmp/i8") / f"{name}-int8", BuildOptions("int8", engine=False), calib_frames=calib).bundle
    c = compare_bundle_precisions(b, test, labels)
    print(name, "int8 AUROC", round(c.auroc, 4), "delta points", round(100 * c.auroc_delta, 2), f"{time.time()-t:.0f}s", flush=True)
