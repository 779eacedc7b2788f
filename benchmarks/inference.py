"""Inference: latency, throughput and the share of each job outside the network, per network, in process.

Each network's synthetic demo studies are read once; every job then runs as the node's worker runs it
(`scintnode.infer.run_network`: decode, preprocessing, the network with its Grad-CAM, SR, SC and SEG),
several times over. The network's own figure is its forward pass, as the network timed it; everything else
in the job is "outside", as the issue counts it (decode, preprocessing, Grad-CAM, writing DICOM), of which
Grad-CAM and the DICOM writing (SR, SC, SEG) are shown apart.
Throughput is jobs per second, one after another in one thread, as the node's single worker runs them.
The networks run where `--device` says, as the node's `inference_device` setting does (default auto: a CUDA GPU
when torch sees one, else the CPU), and the device is recorded. On a GPU each forward pass is timed up to the
GPU's finishing it.

`--paper-size` runs the networks shipped below their paper's input size (trained on 2 CPU cores) at that
size instead, with untrained random weights: their predictions mean nothing, but the job's time and its
share outside the network are what a site's paper-size weights would cost on this machine.

    .venv/bin/python -m benchmarks.inference [--repeats 5] [--network thyroid-resnet34 ...] [--paper-size]
        [--device cuda]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from pydicom import Dataset, dcmread

from benchmarks.stats import quantile
from scintnode.config import DEFAULT_DEVICE
from scintnode.demo_cases import CASES, DemoStudy
from scintnode.heap_reuse import keep_freed_memory_for_reuse
from scintnode.huge_pages import avoid_numpy_huge_pages
from scintnode.infer import run_network
from scintnode.models.device import torch_device
from scintnode.models.registry import Network, default_registry

# The slot each file of a demo study fills, by network and association (episodes only).
_EPISODE_SLOTS: dict[str, tuple[tuple[str, ...], ...]] = {
    "paranet-small": (("early", "late"), ("thyroid",)),
    "ct-parathyroid-unet": (("unenhanced",), ("enhanced",)),
}
OUTPUTS: dict[str, tuple[str, ...]] = {"ct-parathyroid-unet": ("seg", "sr", "sc")}


@dataclass(frozen=True)
class Job:
    sources: list[Dataset]
    slots: list[str] | None


@dataclass(frozen=True)
class Row:
    network: str
    jobs: int
    job_median_ms: float
    job_p95_ms: float
    network_median_ms: float
    explain_median_ms: float
    writing_median_ms: float
    per_second: float

    @property
    def outside_share(self) -> float:
        return 1.0 - self.network_median_ms / self.job_median_ms if self.job_median_ms else 0.0


def demo_job(study: DemoStudy) -> Job:
    """One demo study's sources as the node's job holds them, with the episode's slot names."""
    sources: list[Dataset] = []
    slots: list[str] = []
    names = _EPISODE_SLOTS.get(study.network)
    for number, association in enumerate(study.associations):
        for position, path in enumerate(association):
            sources.append(dcmread(path))
            if names is not None:
                slots.append(names[number][min(position, len(names[number]) - 1)])
    return Job(sources, slots if names is not None else None)


def measure(network: Network, name: str, jobs: list[Job], repeats: int, label: str | None = None) -> Row:
    outputs = OUTPUTS.get(name, ("sr", "sc"))
    run_network(network, jobs[0].sources, outputs, slots=jobs[0].slots)  # warm-up: first-call allocations
    totals, inside, explaining, writing = [], [], [], []
    started = time.perf_counter()
    for _ in range(repeats):
        for job in jobs:
            result = run_network(network, job.sources, outputs, slots=job.slots)
            totals.append(result.total_ms)
            inside.append(result.inference_ms)
            explaining.append(result.explain_ms)
            writing.append(result.writing_ms)
    elapsed = time.perf_counter() - started
    return Row(
        label or name,
        len(totals),
        statistics.median(totals),
        quantile(totals, 0.95),
        statistics.median(inside),
        statistics.median(explaining),
        statistics.median(writing),
        len(totals) / elapsed,
    )


def paper_size_networks(on: torch.device) -> dict[str, tuple[str, Network]]:
    """The networks shipped below their paper's input size, rebuilt at that size with untrained weights on device
    `on`, each with the name its row is printed under. Dscint and the CT U-Net already run at their papers' sizes."""
    from scintnode.models import i131_neck, paranet, thyroid

    untrained = "untrained"
    full = paranet.find_variant("paranet")
    return {
        # Paper 002 does not state its input size; 224 px is the standard input of the ResNet-34 it names.
        "thyroid-resnet34": (
            "thyroid-resnet34 at 224 px, untrained",
            thyroid.ThyroidNetwork(thyroid.ThyroidResNet34().to(on), thyroid.model_spec(untrained, untrained), 224),
        ),
        # Paper 004: "each image ... is sized to 224 x 224 for ResNet-18 training".
        "i131-neck-resnet18": (
            "i131-neck-resnet18 at 224 px, untrained",
            i131_neck.I131NeckNetwork(
                i131_neck.ResidualResNet18().to(on), i131_neck.model_spec(untrained, untrained), 224
            ),
        ),
        # Paper 000: three VGG19 paths at 350 px; it runs the same episodes as the small variant.
        "paranet-small": (
            f"paranet (3x VGG19) at {full.image_size} px, untrained",
            paranet.ParaNetNetwork(
                paranet.build(full.name).to(on),
                paranet.model_spec(full.name, untrained, untrained, True),
                full.image_size,
            ),
        ),
    }


def describe(on: torch.device) -> str:
    """The device the networks run on, as the results record it; the CPU's torch threads do the rest anyway."""
    cpu = f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s)"
    if on.type == "cuda":
        return f"CUDA {torch.cuda.get_device_name(on)} (decode, preprocessing and writing on the {cpu})"
    return cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="passes over each network's studies")
    parser.add_argument("--per-class", type=int, default=2, help="synthetic demo studies per class")
    parser.add_argument("--network", action="append", choices=sorted(CASES), help="default: all")
    parser.add_argument(
        "--paper-size", action="store_true", help="networks shipped smaller run at their paper's size, untrained"
    )
    parser.add_argument(
        "--device",
        default=DEFAULT_DEVICE,
        help="where the networks run, as the node's inference_device setting: "
        "auto (a CUDA GPU when torch sees one), cpu, cuda or cuda:N",
    )
    args = parser.parse_args(argv)
    avoid_numpy_huge_pages()  # as the node's process does
    keep_freed_memory_for_reuse()
    on = torch_device(args.device)
    registry = default_registry(args.device)
    resized = paper_size_networks(on) if args.paper_size else {}
    print(f"device: {describe(on)}, torch {torch.__version__}; synthetic studies")
    print(
        "| network | jobs | job median ms | job p95 ms | network median ms | Grad-CAM median ms "
        "| DICOM writing median ms | share outside the network | jobs/s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="scintnode-inference-") as tmp:
        for name in args.network or sorted(CASES):
            studies = CASES[name](Path(tmp) / name, args.per_class, 7)
            label, network = resized[name] if name in resized else (name, registry.get(name))
            row = measure(network, name, [demo_job(s) for s in studies], args.repeats, label)
            print(
                f"| {row.network} | {row.jobs} | {row.job_median_ms:.1f} | {row.job_p95_ms:.1f} | "
                f"{row.network_median_ms:.1f} | {row.explain_median_ms:.1f} | {row.writing_median_ms:.1f} | "
                f"{row.outside_share:.0%} | "
                f"{row.per_second:.1f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
