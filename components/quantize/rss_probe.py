"""Peak resident memory of a fresh inference process: load the IR, compile, run batches, report VmHWM.

Run as `python -m visionnode.components.quantize.rss_probe MODEL.xml --size S --batch B` (perf.py does);
prints one JSON line. It imports only openvino and numpy, as a serving process would: no torch, no nncf.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_xml")
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import numpy as np
    import openvino as ov

    start = time.perf_counter()
    compiled = ov.Core().compile_model(args.model_xml, "CPU", {"INFERENCE_NUM_THREADS": args.threads,
                                                               "PERFORMANCE_HINT": "THROUGHPUT"})
    load_s = time.perf_counter() - start
    images = np.random.default_rng(0).integers(0, 256, (args.batch, args.size, args.size, 3), dtype=np.uint8)
    request = compiled.create_infer_request()
    for _ in range(args.iterations):
        request.infer({0: images})
    json.dump({"peak_rss_bytes": peak_rss_bytes(), "load_s": load_s}, sys.stdout)
    sys.stdout.write("\n")
    return 0


def peak_rss_bytes() -> int:
    """This process's own high-water RSS. VmHWM, not ru_maxrss: on Linux ru_maxrss survives exec and so
    includes the parent's RSS at fork/vfork time (a 1 GB parent made a ResNet-18 probe read 1.1 GB)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


if __name__ == "__main__":
    sys.exit(main())
