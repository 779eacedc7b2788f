"""`scintnode phantoms`: write synthetic studies with ground truth, one sub-command per study kind.

Imported only when used (scintnode/cli.py); each sub-command names its generator module."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def add_ct_geometry_options(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """--shape and --spacing of synthetic CT series; with a prefix (the benchmark's "ct-"), --ct-shape etc."""
    parser.add_argument(
        f"--{prefix}shape",
        type=int,
        nargs=3,
        metavar=("SLICES", "ROWS", "COLUMNS"),
        help="each CT series' size (default 64 128 128; a clinical neck CT is about 200 512 512)",
    )
    parser.add_argument(
        f"--{prefix}spacing",
        type=float,
        nargs=3,
        metavar=("SLICE", "ROW", "COLUMN"),
        help="mm between slices, rows and columns (default 1 1 1; clinical about 1 0.45 0.45)",
    )


def ct_geometry(
    shape: Sequence[int] | None, spacing: Sequence[float] | None
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """The synthetic CT geometry asked for, with the demo's defaults for what was not; ValueError if unusable."""
    from scintnode.phantoms import ct_parathyroid

    slices, rows, columns = shape or ct_parathyroid.SHAPE
    along, down, across = spacing or ct_parathyroid.SPACING_MM
    if min(slices, rows, columns) < 8 or min(along, down, across) <= 0:
        raise ValueError("a CT series needs at least 8 slices, rows and columns, and spacings over 0 mm")
    return (slices, rows, columns), (along, down, across)


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
    bone = kinds.add_parser(
        "bone",
        help="whole-body 99mTc-MDP bone and I-131 scans of the 4 classes of paper 003 (Dscint), anterior+posterior",
    )
    bone.add_argument("--out", type=Path, required=True, help="folder for the .dcm files and ground_truth.json")
    bone.add_argument("--per-class", type=int, default=5, help="studies per class (default 5)")
    bone.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    i131 = kinds.add_parser(
        "i131-neck",
        help="131I neck scans after thyroidectomy, with or without residual thyroid tissue (paper 004), ANT+POST",
    )
    i131.add_argument("--out", type=Path, required=True, help="folder for the .dcm files and ground_truth.json")
    i131.add_argument("--count", type=int, default=10, help="studies (default 10)")
    i131.add_argument(
        "--residual-fraction", type=float, default=346 / 446, help="share with residual tissue (default 346/446)"
    )
    i131.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ct = kinds.add_parser(
        "ct-parathyroid",
        help="dual-phase neck CT (unenhanced + enhanced series) with parathyroid gland masks (paper 001)",
    )
    ct.add_argument("--out", type=Path, required=True, help="folder for the series, labels.npy and ground_truth.json")
    ct.add_argument("--count", type=int, default=4, help="patients, one study each (default 4)")
    ct.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    add_ct_geometry_options(ct)
    para = kinds.add_parser(
        "parathyroid",
        help="dual-phase 99mTc-sestamibi parathyroid studies + pertechnetate thyroid scans with glands (paper 000)",
    )
    para.add_argument("--out", type=Path, required=True, help="folder for the .dcm files and ground_truth.json")
    para.add_argument("--patients", type=int, default=10, help="patients (default 10)")
    para.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.kind == "thyroid":
        from scintnode.phantoms import thyroid

        if args.per_class < 1:
            print("scintnode phantoms thyroid: --per-class must be at least 1", file=sys.stderr)
            return 2
        truth = thyroid.write_studies(args.out, args.per_class, args.seed)
        print(f"wrote {args.per_class * len(thyroid.CLASSES)} synthetic thyroid studies and {truth}")
        return 0
    if args.kind == "bone":
        from scintnode.phantoms import bone

        if args.per_class < 1:
            print("scintnode phantoms bone: --per-class must be at least 1")
            return 2
        truth = bone.write_studies(args.out, args.per_class, args.seed)
        print(f"wrote {args.per_class * len(bone.CLASSES)} synthetic whole-body studies and {truth}")
        return 0
    if args.kind == "i131-neck":
        from scintnode.phantoms import i131_neck

        if args.count < 1 or not 0.0 <= args.residual_fraction <= 1.0:
            print("scintnode phantoms i131-neck: --count must be at least 1 and --residual-fraction within 0..1")
            return 2
        truth = i131_neck.write_studies(args.out, args.count, args.seed, args.residual_fraction)
        print(f"wrote {args.count} synthetic 131I neck studies and {truth}")
        return 0
    if args.kind == "ct-parathyroid":
        from scintnode.phantoms import ct_parathyroid

        try:
            shape, spacing = ct_geometry(args.shape, args.spacing)
        except ValueError as exc:
            print(f"scintnode phantoms ct-parathyroid: {exc}")
            return 2
        if args.count < 1:
            print("scintnode phantoms ct-parathyroid: --count must be at least 1")
            return 2
        truth = ct_parathyroid.write_studies(args.out, args.count, args.seed, shape, spacing)
        print(f"wrote {args.count} synthetic dual-phase neck CT studies and {truth}")
        return 0
    if args.kind == "parathyroid":
        from scintnode.phantoms import parathyroid

        if args.patients < 1:
            print("scintnode phantoms parathyroid: --patients must be at least 1")
            return 2
        truth = parathyroid.write_studies(args.out, args.patients, args.seed)
        print(f"wrote synthetic parathyroid studies of {args.patients} patients and {truth}")
        return 0
    return 2
