"""`scintnode train`: one sub-command per network, each training on synthetic phantoms by its paper's protocol.

Imported only when used (scintnode/cli.py), so other commands do not pay for torch."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "weights"


def _device(value: str) -> str:
    from scintnode.config import check_device_setting

    try:
        return check_device_setting(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scintnode train", description="Train and evaluate a network on synthetic phantoms (not clinical)."
    )
    networks = parser.add_subparsers(dest="network", required=True, metavar="NETWORK")
    thyroid = networks.add_parser(
        "thyroid",
        help="paper 002 ResNet-34 thyroid classifier: k-fold CV, final model, fp16 weights, metrics, model card",
    )
    thyroid.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    thyroid.add_argument("--per-class", type=int, help="phantoms per class")
    thyroid.add_argument("--epochs", type=int, help="epochs per model")
    thyroid.add_argument("--folds", type=int, help="cross-validation folds (paper: 5)")
    thyroid.add_argument("--image-size", type=int, help="network input side in pixels")
    thyroid.add_argument("--seed", type=int, help="seed for phantoms, folds and initialisation")
    thyroid.add_argument("--learning-rate", type=float, help="Adam learning rate")
    thyroid.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    thyroid.add_argument(
        "--quick", action="store_true", help="tiny setting for tests (3 per class, 1 epoch, 2 folds, 64px)"
    )
    bone = networks.add_parser(
        "bone",
        help="paper 003 Dscint whole-body classifier: 10 runs of 7:3 patient splits, fp16 weights, metrics, model card",
    )
    bone.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    bone.add_argument("--per-class", type=int, help="synthetic studies (patients) per class")
    bone.add_argument("--runs", type=int, help="random 7:3 splits, each trained anew (paper: 10)")
    bone.add_argument("--epochs", type=int, help="epochs per run")
    bone.add_argument("--seed", type=int, help="seed for phantoms, splits and initialisation")
    bone.add_argument("--learning-rate", type=float, help="Adam learning rate")
    bone.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    bone.add_argument(
        "--quick", action="store_true", help="tiny setting for tests (3 per class, 2 runs, 1 epoch, 256x64)"
    )
    i131 = networks.add_parser(
        "i131-neck",
        help="paper 004 ResNet-18 residual thyroid tissue on 131I neck scans: 10 random 3:1 groupings, final model",
    )
    i131.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    i131.add_argument("--count", type=int, help="phantoms (paper: 446)")
    i131.add_argument("--groupings", type=int, help="random 3:1 groupings (paper: 10)")
    i131.add_argument("--epochs", type=int, help="epochs per model (paper: 80)")
    i131.add_argument("--image-size", type=int, help="network input side in pixels (paper: 224)")
    i131.add_argument("--batch-size", type=int, help="batch size (default 16)")
    i131.add_argument("--learning-rate", type=float, help="Adam learning rate (paper, fine-tuning: 1e-5)")
    i131.add_argument("--seed", type=int, help="seed for phantoms, groupings and initialisation")
    i131.add_argument("--check-count", type=int, help="fresh phantoms the final model is checked on")
    i131.add_argument("--pretrained", type=Path, help="torchvision ResNet-18 state_dict (.pth) to fine-tune from")
    i131.add_argument("--cosine", action="store_true", help="anneal the learning rate to 0 (not in the paper)")
    i131.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    i131.add_argument("--quick", action="store_true", help="tiny setting for tests (16 phantoms, 2 groupings, 1 epoch)")
    from scintnode.train import ct_parathyroid

    ct_parathyroid.add_arguments(
        networks.add_parser(
            "ct-parathyroid",
            help="paper 001 dual-phase CT 3D U-Net: 38/9 patient split, per-gland sensitivity, fp16 weights, card",
        )
    )
    from scintnode.train import parathyroid

    parathyroid.add_arguments(
        networks.add_parser(
            "parathyroid",
            help="paper 000 ParaNet (3x VGG19, MIBI early/late + thyroid): 10-fold CV, gland-level Grad-CAM, card",
        )
    )
    for sub_command in networks.choices.values():
        sub_command.add_argument(
            "--device",
            type=_device,
            default="cpu",
            help="where to train: cpu (default; the committed weights were made there), auto (a CUDA GPU when torch "
            "sees one), cuda or cuda:N",
        )
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from scintnode.models.device import DeviceUnavailable, torch_device

    try:
        torch_device(args.device)
    except DeviceUnavailable as exc:
        print(f"scintnode train {args.network}: {exc}", file=sys.stderr)
        return 2
    if args.network == "thyroid":
        return _thyroid(args, argv)
    if args.network == "bone":
        return _bone(args, argv)
    if args.network == "i131-neck":
        return _i131_neck(args, argv)
    if args.network == "ct-parathyroid":
        from scintnode.train import ct_parathyroid

        return ct_parathyroid.run_from_args(args, argv)
    if args.network == "parathyroid":
        from scintnode.train import parathyroid

        return parathyroid.run_from_args(args, argv)
    return 2


def _bone(args: argparse.Namespace, argv: list[str]) -> int:
    from dataclasses import replace

    import torch

    from scintnode.train import bone

    base = bone.QUICK if args.quick else bone.TrainConfig()
    overrides = {
        "per_class": args.per_class,
        "runs": args.runs,
        "epochs": args.epochs,
        "seed": args.seed,
        "learning_rate": args.learning_rate,
        "device": args.device,
    }
    config = replace(base, **{k: v for k, v in overrides.items() if v is not None})
    if config.per_class < 2 or config.runs < 1 or config.epochs < 1:
        print("scintnode train bone: need per-class >= 2, runs >= 1 and epochs >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, args.threads))
    bone.train(config, args.out, shlex.join(["scintnode", "train", *argv]), log=lambda line: print(line, flush=True))
    return 0


def _thyroid(args: argparse.Namespace, argv: list[str]) -> int:
    from dataclasses import replace

    import torch

    from scintnode.train import thyroid

    base = thyroid.QUICK if args.quick else thyroid.TrainConfig()
    overrides = {
        "per_class": args.per_class,
        "epochs": args.epochs,
        "folds": args.folds,
        "image_size": args.image_size,
        "seed": args.seed,
        "learning_rate": args.learning_rate,
        "device": args.device,
    }
    config = replace(base, **{k: v for k, v in overrides.items() if v is not None})
    if config.per_class < config.folds or config.epochs < 1 or config.image_size < 32:
        print(
            "scintnode train thyroid: need per-class >= folds, epochs >= 1 and image-size >= 32",
            file=sys.stderr,
        )
        return 2
    torch.set_num_threads(max(1, args.threads))
    command = shlex.join(["scintnode", "train", *argv])
    thyroid.train(config, args.out, command, log=lambda line: print(line, flush=True))
    return 0


def _i131_neck(args: argparse.Namespace, argv: list[str]) -> int:
    from dataclasses import replace

    import torch

    from scintnode.train import i131_neck

    base = i131_neck.QUICK if args.quick else i131_neck.TrainConfig()
    overrides = {
        "count": args.count,
        "groupings": args.groupings,
        "epochs": args.epochs,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "seed": args.seed,
        "check_count": args.check_count,
        "pretrained": str(args.pretrained) if args.pretrained else None,
        "cosine": True if args.cosine else None,
        "device": args.device,
    }
    config = replace(base, **{k: v for k, v in overrides.items() if v is not None})
    if config.count < 8 or config.groupings < 1 or config.epochs < 1 or config.image_size < 32:
        print(
            "scintnode train i131-neck: need count >= 8, groupings >= 1, epochs >= 1, image-size >= 32", file=sys.stderr
        )
        return 2
    if config.pretrained and not Path(config.pretrained).is_file():
        print(f"scintnode train i131-neck: no pretrained weights at {config.pretrained}", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, args.threads))
    command = shlex.join(["scintnode", "train", *argv])
    i131_neck.train(config, args.out, command, log=lambda line: print(line, flush=True))
    return 0
