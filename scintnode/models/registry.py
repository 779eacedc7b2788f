"""Named networks the node can run: rules refer to them by name, the job runner asks here for one.

Networks are loaded once and kept; each takes the job's source datasets and returns a Finding."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from pydicom import Dataset

from scintnode.config import DEFAULT_DEVICE
from scintnode.finding import Finding
from scintnode.models.spec import ModelSpec


class Network(Protocol):
    """A loaded network ready to run on the images of one job."""

    spec: ModelSpec

    def run(self, sources: Sequence[Dataset]) -> Finding: ...


class EpisodeNetwork(Network, Protocol):
    """A network whose inputs come from an episode's slots; `slots[i]` names the slot of `sources[i]`."""

    def run_episode(self, slots: Sequence[str], sources: Sequence[Dataset]) -> Finding: ...


class UnknownNetwork(LookupError):
    def __init__(self, name: str, known: Sequence[str]) -> None:
        super().__init__(f"no network named {name!r}; known networks: {', '.join(sorted(known))}")
        self.name = name


class Registry:
    """Loads each network on first use and keeps it; thread-safe.

    ``modules`` names the module each network's code lives in, so `import_code` can import it (and torch)
    without loading any weights."""

    def __init__(self, factories: dict[str, Callable[[], Network]], modules: dict[str, str] | None = None) -> None:
        self._factories = dict(factories)
        self._modules = dict(modules or {})
        self._loaded: dict[str, Network] = {}
        self._lock = threading.Lock()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._factories))

    def get(self, name: str) -> Network:
        with self._lock:
            if name not in self._loaded:
                if name not in self._factories:
                    raise UnknownNetwork(name, list(self._factories))
                self._loaded[name] = self._factories[name]()
            return self._loaded[name]

    def import_code(self, name: str) -> None:
        """Import the code of network `name` (a second for torch, paid once), not its weights; ImportError if it
        cannot be. A name without a module given does nothing."""
        module = self._modules.get(name)
        if module is not None:
            importlib.import_module(module)


# name -> (module, loader in it, the loader's arguments, whether it runs torch): the networks this build ships
_SHIPPED: dict[str, tuple[str, str, tuple[str, ...], bool]] = {
    "thyroid-resnet34": ("scintnode.models.thyroid", "load_thyroid_network", (), True),
    "i131-neck-resnet18": ("scintnode.models.i131_neck", "load_i131_neck_network", (), True),
    "input-check": ("scintnode.models.input_check", "load_input_check", (), False),
    "dscint": ("scintnode.models.dscint", "load_dscint_network", (), True),
    "ct-parathyroid-unet": ("scintnode.models.ct_unet", "load_ct_parathyroid_network", (), True),
    "paranet-small": ("scintnode.models.paranet", "load_paranet_network", ("paranet-small",), True),
    "paranet": ("scintnode.models.paranet", "load_paranet_network", ("paranet",), True),
}


def _loader(
    module: str, function: str, arguments: tuple[str, ...], runs_torch: bool, device: str
) -> Callable[[], Network]:
    def load() -> Network:
        extra = {"device": device} if runs_torch else {}
        network: Network = getattr(importlib.import_module(module), function)(*arguments, **extra)
        return network

    return load


def default_registry(device: str = DEFAULT_DEVICE) -> Registry:
    """The networks this build ships, each loaded from its committed weights on first use, onto the device the
    node's `inference_device` setting names (`auto`: a CUDA GPU when torch sees one, else the CPU)."""
    return Registry(
        {name: _loader(*entry, device) for name, entry in _SHIPPED.items()},
        {name: module for name, (module, *_) in _SHIPPED.items()},
    )
