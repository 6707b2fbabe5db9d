"""Soak benchmark: the four-model mix at ~80% of its measured capacity through the real server
for ten minutes (default). Records benchmarks/results/soak.{json,md}.

Usage: python benchmarks/soak.py [--duration 600] [--load 0.8] [--out benchmarks/results]"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgeplex.bench import report
from edgeplex.bench.soak import soak

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of paced load")
    parser.add_argument("--load", type=float, default=0.8, help="fraction of the measured mix capacity")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before memory must stay flat")
    parser.add_argument("--cores", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    window = 60.0 if args.duration >= 300 else max(10.0, args.duration / 6)
    result, text = soak(args.duration, args.load, min(args.warmup, args.duration / 2), window_s=window,
                        cores=args.cores)
    path = report.write(args.out, "soak", result, text)
    print(text)
    print(f"recorded: {path}")
    sys.exit(0 if result["passed"] else 1)
