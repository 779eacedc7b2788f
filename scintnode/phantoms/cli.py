"""`scintnode phantoms`: write synthetic studies with ground truth, one sub-command per study kind.

Imported only when used (scintnode/cli.py); each sub-command names its generator module."""

from __future__ import annotations

import argparse
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scintnode phantoms", description="Write synthetic NM studies with ground truth (never patient data)."
    )
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="KIND")
    thyroid = kinds.add_parser(
        "thyroid", help="99mTc-pertechnetate thyroid scans of the 4 classes of paper 002, one study each"
    )
    thyroid.add_argument("--out", type=Path, required=True, help="folder for the .dcm files and ground_truth.json")
    thyroid.add_argument("--per-class", type=int, default=5, help="studies per class (default 5)")
    thyroid.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.kind == "thyroid":
        from scintnode.phantoms import thyroid

        if args.per_class < 1:
            print("scintnode phantoms thyroid: --per-class must be at least 1")
            return 2
        truth = thyroid.write_studies(args.out, args.per_class, args.seed)
        print(f"wrote {args.per_class * len(thyroid.CLASSES)} synthetic thyroid studies and {truth}")
        return 0
    return 2
