"""Where the networks run: a device setting (the node's `inference_device`, `scintnode train --device`) as a
torch device, and the wait that makes a timer around a GPU pass measure the pass.

Called by each network's loader (the weights go to the device once), by training, and around each timed forward
pass. The setting's form is checked without torch when the config is read (`config.check_device_setting`)."""

from __future__ import annotations

import torch
from torch import nn

from scintnode.config import DEFAULT_DEVICE, check_device_setting


class DeviceUnavailable(RuntimeError):
    """The setting names a GPU this machine does not have."""


def torch_device(setting: str = DEFAULT_DEVICE) -> torch.device:
    """`auto`: the first CUDA GPU when torch sees one, else the CPU. `cuda` or `cuda:N` must exist. A GPU computes
    in full float32 from then on (`keep_float32`)."""
    check_device_setting(setting)
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(setting)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise DeviceUnavailable(
                f"the device {setting!r} is not here: torch sees {count} CUDA GPU(s) "
                f"(torch {torch.__version__}); use auto or cpu, or install a CUDA build of torch"
            )
        keep_float32()
    return device


def keep_float32() -> None:
    """Turn TensorFloat-32 off for the process: cuDNN uses it for convolutions by default on Ampere and later GPUs,
    keeping 10 bits of mantissa, and a network trained and checked in float32 would then give a GPU's
    probabilities and heatmaps that differ from the CPU's by more than rounding."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def model_device(model: nn.Module) -> torch.device:
    """The device a model's weights are on (the CPU for a model without parameters)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def finish_queued_work(device: torch.device) -> None:
    """Wait until the device has run what was queued on it: CUDA kernels run after their call returns, so a timer
    stopped without this measures the queueing, not the pass. Nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
