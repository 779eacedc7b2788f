"""The committed weights file format ("scintnode-weights/1"): a half-precision state_dict with its metadata.

Training writes it (scintnode train ...); each network's loader reads it on the node's first job for that network."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

WEIGHTS_FORMAT = "scintnode-weights/1"


def save_half_precision(model: nn.Module, path: Path, meta: dict[str, Any], classes: Sequence[str]) -> None:
    """Write the state_dict in half precision (integer buffers unchanged) with its metadata and class keys."""
    state = {
        k: (v.detach().half() if v.is_floating_point() else v.detach()).cpu() for k, v in model.state_dict().items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": WEIGHTS_FORMAT, **meta, "classes": list(classes), "state_dict": state}, path)


def load_float_state(
    path: Path, classes: Sequence[str], train_command: str
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """A file written by `save_half_precision`, as a float32 state_dict and its metadata; the classes must match."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"weights not found at {path}; run `{train_command}`") from None
    if not isinstance(payload, dict) or payload.get("format") != WEIGHTS_FORMAT:
        raise ValueError(f"{path} is not a scintnode weights file (format {WEIGHTS_FORMAT})")
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    if tuple(meta.get("classes", ())) != tuple(classes):
        raise ValueError(f"{path} was trained for classes {meta.get('classes')}, expected {list(classes)}")
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    return state, meta


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
