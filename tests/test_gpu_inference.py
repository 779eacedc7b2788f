"""On a CUDA GPU every network finds what it finds on the CPU: the same class, the same probabilities and heatmaps
to float rounding, results written from them; and every trainer trains there, writing weights a CPU node loads.

These need a GPU, which neither the development machine nor CI has; they run where torch sees one (the device
machine: README, "Performance"). Everything they exercise up to the device runs in the CPU tests too."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.inference import OUTPUTS, demo_job
from scintnode.demo_cases import CASES
from scintnode.infer import run_network
from scintnode.models.device import model_device
from scintnode.models.registry import default_registry

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none here)")

NETWORKS = sorted(CASES)


@pytest.mark.parametrize("name", NETWORKS)
def test_a_network_on_the_gpu_finds_what_it_finds_on_the_cpu(name: str, tmp_path: Path) -> None:
    on_gpu, on_cpu = default_registry("cuda").get(name), default_registry("cpu").get(name)
    assert model_device(on_gpu.model).type == "cuda"  # type: ignore[attr-defined]
    outputs = OUTPUTS.get(name, ("sr", "sc"))
    for job in map(demo_job, CASES[name](tmp_path, 1, 7)):
        gpu = run_network(on_gpu, job.sources, outputs, slots=job.slots)
        cpu = run_network(on_cpu, job.sources, outputs, slots=job.slots)
        assert gpu.finding.predicted == cpu.finding.predicted
        for key, probability in cpu.finding.probabilities.items():
            assert gpu.finding.probabilities[key] == pytest.approx(probability, abs=1e-3), key
        for gpu_map, cpu_map in zip(gpu.finding.heatmaps, cpu.finding.heatmaps, strict=True):
            np.testing.assert_allclose(gpu_map, cpu_map, atol=1e-2)
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
