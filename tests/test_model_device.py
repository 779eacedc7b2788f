"""Where the networks run and train: the `inference_device` setting, checked when the config is read, refused at
start when it names a GPU the machine lacks, and handed by the registry to every network's loader; and
`scintnode train --device`, refused before training starts when it names such a GPU, and used by every trainer."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from scintnode.config import ConfigError, Settings, load_settings
from scintnode.models.device import DeviceUnavailable, keep_float32, model_device, torch_device
from scintnode.models.registry import default_registry

REPOSITORY_RULES = Path(__file__).resolve().parent.parent / "rules"
# a GPU index this machine does not have, whatever it has
ABSENT_GPU = f"cuda:{torch.cuda.device_count()}"


def test_auto_is_the_gpu_when_torch_sees_one_else_the_cpu() -> None:
    assert torch_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert torch_device() == torch_device("auto")
    assert torch_device("cpu") == torch.device("cpu")


def test_a_gpu_computes_in_full_float32_as_the_networks_were_checked() -> None:
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    keep_float32()
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32


def test_a_gpu_the_machine_lacks_is_refused_with_what_to_set_instead() -> None:
    with pytest.raises(DeviceUnavailable, match=rf"'{ABSENT_GPU}' is not here.*CUDA GPU\(s\).*auto or cpu"):
        torch_device(ABSENT_GPU)
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailable):
            torch_device("cuda")


@pytest.mark.parametrize("value", ["gpu", "CUDA", "cuda:", "cuda:x", "cpu ", "mps", ""])
def test_a_malformed_setting_is_an_error_when_the_config_is_read(value: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"inference_device\n.*a device must be auto, cpu, cuda or cuda:N"):
        Settings(inference_device=value)
    config = tmp_path / "node.yaml"
    config.write_text(f"inference_device: '{value}'\n")
    with pytest.raises(ConfigError, match="inference_device"):
        load_settings(config)
    with pytest.raises(ValueError, match="a device must be"):
        torch_device(value)


def test_the_registry_hands_the_setting_to_each_loader() -> None:
    with pytest.raises(DeviceUnavailable):
        default_registry(ABSENT_GPU).get("thyroid-resnet34")
    with pytest.raises(DeviceUnavailable):
        default_registry(ABSENT_GPU).get("ct-parathyroid-unet")
    default_registry(ABSENT_GPU).get("input-check")  # runs no torch: no device to refuse
    for name in ("dscint", "i131-neck-resnet18", "paranet-small"):
        network = default_registry("cpu").get(name)
        assert model_device(network.model) == torch.device("cpu")  # type: ignore[attr-defined]


def _config(root: Path, device: str, rules: tuple[str, ...]) -> Path:
    (root / "rules").mkdir()
    for name in rules:
        (root / "rules" / name).write_text((REPOSITORY_RULES / name).read_text())
    config = root / "node.yaml"
    config.write_text(
        f"node: {{port: 0, bind_address: 127.0.0.1}}\nstorage: {{root: {root / 'spool'}}}\n"
        f"rules_dir: {root / 'rules'}\nhttp: {{enabled: false}}\n"
        "destinations: {pacs: {ae_title: PACS, host: 127.0.0.1, port: 104}}\n"
        f"inference_device: '{device}'\n"
    )
    return config


def test_serve_refuses_to_start_when_its_networks_would_need_a_gpu_it_lacks(tmp_path: Path) -> None:
    config = _config(tmp_path, ABSENT_GPU, ("thyroid.yaml",))
    result = subprocess.run(
        [sys.executable, "-m", "scintnode", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert f"inference_device: the device '{ABSENT_GPU}' is not here" in result.stderr


def test_a_node_whose_rules_use_no_network_starts_whatever_the_device(tmp_path: Path) -> None:
    from scintnode.node import Node

    node = Node(load_settings(_config(tmp_path, ABSENT_GPU, ())))
    node.start()
    try:
        assert node.receiver.listening
    finally:
        node.stop()


TRAIN_COMMANDS = ("thyroid", "bone", "i131-neck", "ct-parathyroid", "parathyroid")


def _train(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scintnode", "train", *arguments], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("network", TRAIN_COMMANDS)
def test_training_refuses_a_gpu_the_machine_lacks_before_it_starts(network: str, tmp_path: Path) -> None:
    result = _train(network, "--quick", "--out", str(tmp_path / "out"), "--device", ABSENT_GPU)
    assert result.returncode == 2, result.stderr
    assert f"scintnode train {network}: the device '{ABSENT_GPU}' is not here" in result.stderr
    assert not (tmp_path / "out").exists()


def test_training_refuses_a_malformed_device() -> None:
    result = _train("thyroid", "--quick", "--device", "gpu")
    assert result.returncode == 2
    assert "a device must be auto, cpu, cuda or cuda:N" in result.stderr


def test_each_trainer_trains_on_the_device_its_config_names() -> None:
    from dataclasses import replace

    from scintnode.train import bone, ct_parathyroid, i131_neck, parathyroid, thyroid

    nothing = np.zeros(0)
    fits: dict[str, Callable[[], object]] = {
        "thyroid": lambda: thyroid.fit(nothing, nothing, replace(thyroid.QUICK, device=ABSENT_GPU), 0, print),
        "bone": lambda: bone.fit(None, nothing, replace(bone.QUICK, device=ABSENT_GPU), 0, print),  # type: ignore[arg-type]
        "i131-neck": lambda: i131_neck.fit(nothing, nothing, replace(i131_neck.QUICK, device=ABSENT_GPU), 0, print),
        "ct-parathyroid": lambda: ct_parathyroid.fit([], replace(ct_parathyroid.QUICK, device=ABSENT_GPU), print),
        "parathyroid": lambda: parathyroid.fit(
            nothing, nothing, replace(parathyroid.QUICK, device=ABSENT_GPU), 0, print
        ),
    }
    assert sorted(fits) == sorted(TRAIN_COMMANDS)
    for fit in fits.values():
        with pytest.raises(DeviceUnavailable):
            fit()
