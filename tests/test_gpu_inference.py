"""On a CUDA GPU every network finds what it finds on the CPU: the same class, the same probabilities and heatmaps
to float rounding, results written from them; and every trainer trains there, writing weights a CPU node loads.

These need a GPU, which neither the development machine nor CI has; they run where torch sees one (the device
machine: benchmarks/RESULTS.md, "Inference on a GPU"). Everything they exercise up to the device runs in the CPU
tests too. The networks are built with seeded random weights, the same on both devices, not loaded from the
committed files: the device machine takes a working tree of at most 64 MiB, and the weights are 108 MB."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from benchmarks.inference import OUTPUTS, demo_job
from scintnode.demo_cases import CASES
from scintnode.infer import run_network
from scintnode.models import ct_unet, dscint, i131_neck, paranet, thyroid
from scintnode.models.device import model_device, torch_device
from scintnode.models.registry import Network

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none here)")

UNTRAINED = "untrained"
SMALL_PARANET = paranet.find_variant("paranet-small")
# name -> (the untrained model, the network running it); the planar ResNets at the size their weights ship at
NETWORKS: dict[str, tuple[Callable[[], nn.Module], Callable[[nn.Module], Network]]] = {
    "thyroid-resnet34": (
        thyroid.ThyroidResNet34,
        lambda model: thyroid.ThyroidNetwork(model, thyroid.model_spec(UNTRAINED, UNTRAINED), 112),  # type: ignore[arg-type]
    ),
    "i131-neck-resnet18": (
        i131_neck.ResidualResNet18,
        lambda model: i131_neck.I131NeckNetwork(model, i131_neck.model_spec(UNTRAINED, UNTRAINED), 112),  # type: ignore[arg-type]
    ),
    "dscint": (dscint.Dscint, lambda model: dscint.DscintNetwork(model, dscint.model_spec(UNTRAINED, UNTRAINED))),  # type: ignore[arg-type]
    "paranet-small": (
        lambda: paranet.build(SMALL_PARANET.name),
        lambda model: paranet.ParaNetNetwork(
            model,  # type: ignore[arg-type]
            paranet.model_spec(SMALL_PARANET.name, UNTRAINED, UNTRAINED, True),
            SMALL_PARANET.image_size,
        ),
    ),
    "ct-parathyroid-unet": (
        ct_unet.UNet3D,
        lambda model: ct_unet.CTParathyroidNetwork(model, ct_unet.model_spec(UNTRAINED)),  # type: ignore[arg-type]
    ),
}


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_a_network_on_the_gpu_finds_what_it_finds_on_the_cpu(name: str, tmp_path: Path) -> None:
    make_model, make_network = NETWORKS[name]
    torch.manual_seed(0)
    model = make_model().eval()
    on_cpu = make_network(model)
    on_gpu = make_network(copy.deepcopy(model).to(torch_device("cuda")))
    assert model_device(on_gpu.model).type == "cuda"  # type: ignore[attr-defined]
    outputs = OUTPUTS.get(name, ("sr", "sc"))
    for job in map(demo_job, CASES[name](tmp_path, 1, 7)):
        gpu = run_network(on_gpu, job.sources, outputs, slots=job.slots)
        cpu = run_network(on_cpu, job.sources, outputs, slots=job.slots)
        for key, probability in cpu.finding.probabilities.items():
            assert gpu.finding.probabilities[key] == pytest.approx(probability, abs=1e-4), key
        if max(cpu.finding.probabilities.values()) - sorted(cpu.finding.probabilities.values())[-2] > 1e-3:
            assert gpu.finding.predicted == cpu.finding.predicted  # unless untrained weights leave a near tie
        for gpu_map, cpu_map in zip(gpu.finding.heatmaps, cpu.finding.heatmaps, strict=True):
            np.testing.assert_allclose(gpu_map, cpu_map, atol=1e-3)
        assert [out.kind for out in gpu.outputs] == [out.kind for out in cpu.outputs]
        assert gpu.inference_ms > 0


@pytest.mark.parametrize("network", ["thyroid", "bone", "i131-neck", "ct-parathyroid", "parathyroid"])
def test_quick_training_on_the_gpu_writes_weights_a_cpu_node_loads(network: str, tmp_path: Path) -> None:
    from scintnode.train.cli import main as train

    assert train([network, "--quick", "--out", str(tmp_path), "--device", "cuda"]) == 0
    (weights,) = tmp_path.glob("*.pt")
    payload = torch.load(weights, map_location="cpu", weights_only=True)
    assert payload["training"]["device"] == "cuda"
    assert all(tensor.device.type == "cpu" for tensor in payload["state_dict"].values())
