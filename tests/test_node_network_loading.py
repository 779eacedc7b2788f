"""A node imports torch only for networks its rules use: one whose rules use none never does (180 MB of
memory and a second at start it would not use); one whose rules use a network imports its code at start
(not at its first job) and loads the weights at first use, unless `preload_networks` loads them at start.
Either way the weights load on the pipeline thread, the one thread that runs torch."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import cast

import pytest

REPOSITORY_RULES = Path(__file__).resolve().parent.parent / "rules"

START_AND_STOP_A_NODE = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    from scintnode.config import load_settings
    from scintnode.models.registry import default_registry
    from scintnode.node import Node

    registry = default_registry()
    node = Node(load_settings(Path(sys.argv[1])), registry=registry)
    node.start()
    node.stop()
    print("torch imported:", "torch" in sys.modules)
    print("thyroid code imported:", "scintnode.models.thyroid" in sys.modules)
    print("networks loaded:", len(registry._loaded))
    """
)


def _node_config(root: Path, rules: tuple[str, ...] = (), preload: bool = False) -> Path:
    """A node on a free port over `root`, with these files of the repository's rules."""
    (root / "rules").mkdir()
    for name in rules:
        shutil.copy(REPOSITORY_RULES / name, root / "rules")
    config = root / "node.yaml"
    config.write_text(
        f"node: {{port: 0, bind_address: 127.0.0.1}}\nstorage: {{root: {root / 'spool'}}}\n"
        f"rules_dir: {root / 'rules'}\nhttp: {{enabled: false}}\n"
        "destinations: {pacs: {ae_title: PACS, host: 127.0.0.1, port: 104}}\n"
        f"preload_networks: {str(preload).lower()}\n"
    )
    return config


def _start_and_stop(config: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-c", START_AND_STOP_A_NODE, str(config)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_node_that_runs_no_network_does_not_import_torch(tmp_path: Path) -> None:
    out = _start_and_stop(_node_config(tmp_path))
    assert "torch imported: False" in out and "networks loaded: 0" in out


def test_a_node_imports_the_code_of_its_rules_networks_at_start_and_their_weights_at_first_use(
    tmp_path: Path,
) -> None:
    out = _start_and_stop(_node_config(tmp_path, ("thyroid.yaml",)))
    assert "torch imported: True" in out and "thyroid code imported: True" in out
    assert "networks loaded: 0" in out  # preload_networks is off by default


def test_a_network_whose_code_cannot_be_imported_is_reported_and_the_node_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from scintnode.config import load_settings
    from scintnode.models.registry import Registry
    from scintnode.node import Node

    registry = Registry({}, {"thyroid-resnet34": "scintnode.models.no_such_module"})
    node = Node(load_settings(_node_config(tmp_path, ("thyroid.yaml",))), registry=registry)
    node.start()
    try:
        assert node.receiver.listening
        assert "network thyroid-resnet34's code could not be imported" in caplog.text
    finally:
        node.stop()


def test_preloaded_weights_load_on_the_pipeline_thread_while_the_node_already_receives(tmp_path: Path) -> None:
    """A second thread running torch would give it a second OpenMP pool, and a forward pass on the pipeline
    thread took 1.7 times as long (scintnode/node.py, `_work`)."""
    from scintnode.config import load_settings
    from scintnode.models.registry import Network, Registry
    from scintnode.node import Node

    loaded_on: list[str] = []
    loading, release = threading.Event(), threading.Event()

    def load_slowly() -> Network:
        loaded_on.append(threading.current_thread().name)
        loading.set()
        release.wait(30)
        return cast(Network, object())  # never run: no study arrives

    registry = Registry({"thyroid-resnet34": load_slowly})
    node = Node(load_settings(_node_config(tmp_path, ("thyroid.yaml",), preload=True)), registry=registry)
    node.start()
    try:
        assert loading.wait(30)
        assert node.receiver.listening, "receiving does not wait for the weights"
    finally:
        release.set()
        node.stop()
    assert loaded_on == ["scintnode-pipeline"]


def test_the_ct_key_image_reads_its_slice_without_torch() -> None:
    code = "import sys, scintnode.write.seg, scintnode.infer; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_every_network_in_the_catalog_has_its_code_and_loader() -> None:
    """The registry names each network's module and loader as text: each must exist, for every catalog name, and
    each that runs torch must take the device setting the registry hands it."""
    import importlib
    import inspect

    from scintnode.models import registry
    from scintnode.models.catalog import network_names

    assert sorted(registry._SHIPPED) == sorted(network_names()) == list(registry.default_registry().names)
    for module, loader, _, runs_torch in registry._SHIPPED.values():
        function = getattr(importlib.import_module(module), loader)
        assert callable(function)
        assert ("device" in inspect.signature(function).parameters) == runs_torch, loader
