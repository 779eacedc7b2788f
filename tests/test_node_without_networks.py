"""A node whose rules use no network never imports torch: 180 MB of memory and a second at start it would
not use. Only loading a network (or a job) brings it in."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

START_AND_STOP_A_NODE = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    from scintnode.config import load_settings
    from scintnode.node import Node

    root = Path(sys.argv[1])
    (root / "rules").mkdir()
    config = root / "node.yaml"
    config.write_text(
        f"node: {{port: 0, bind_address: 127.0.0.1}}\\nstorage: {{root: {root / 'spool'}}}\\n"
        f"rules_dir: {root / 'rules'}\\nhttp: {{enabled: false}}\\n"
    )
    node = Node(load_settings(config))
    node.start()
    node.stop()
    print("torch imported:", "torch" in sys.modules)
    """
)


def test_a_node_that_runs_no_network_does_not_import_torch(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", START_AND_STOP_A_NODE, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "torch imported: False" in result.stdout


def test_the_ct_key_image_reads_its_slice_without_torch() -> None:
    code = "import sys, scintnode.write.seg, scintnode.infer; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
