"""Named networks the node can run: rules refer to them by name, the job runner asks here for one.

Networks are loaded once and kept; each takes the job's source datasets and returns a Finding."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from pydicom import Dataset

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
    """Loads each network on first use and keeps it; thread-safe."""

    def __init__(self, factories: dict[str, Callable[[], Network]]) -> None:
        self._factories = dict(factories)
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


def default_registry() -> Registry:
    """The networks this build ships, each loaded from its committed weights on first use."""

    def thyroid() -> Network:
        from scintnode.models.thyroid import load_thyroid_network

        return load_thyroid_network()

    def dscint() -> Network:
        from scintnode.models.dscint import load_dscint_network

        return load_dscint_network()

    def i131_neck() -> Network:
        from scintnode.models.i131_neck import load_i131_neck_network

        return load_i131_neck_network()

    def ct_parathyroid() -> Network:
        from scintnode.models.ct_unet import load_ct_parathyroid_network

        return load_ct_parathyroid_network()

    def paranet_small() -> Network:
        from scintnode.models.paranet import load_paranet_network

        return load_paranet_network("paranet-small")

    def paranet() -> Network:
        from scintnode.models.paranet import load_paranet_network

        return load_paranet_network("paranet")

    def input_check() -> Network:
        from scintnode.models.input_check import load_input_check

        return load_input_check()

    return Registry(
        {
            "thyroid-resnet34": thyroid,
            "i131-neck-resnet18": i131_neck,
            "input-check": input_check,
            "dscint": dscint,
            "ct-parathyroid-unet": ct_parathyroid,
            "paranet-small": paranet_small,
            "paranet": paranet,
        }
    )
