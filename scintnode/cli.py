"""The `scintnode` command: dispatches to one module per sub-command, imported only when used.

Each sub-command module exposes `main(argv: list[str]) -> int` with its own argparse parser, so
`scintnode rules check` does not pay for importing torch."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("scintnode.serve_cli", "run the DICOM node (receive, route, infer, send)"),
    "demo": ("scintnode.demo", "start a node and an Orthanc PACS, send synthetic studies, print results"),
    "rules": ("scintnode.route.cli", "check, explain, fixture, reload, replay routing rules"),
    "phantoms": ("scintnode.phantoms.cli", "write synthetic studies with ground truth"),
    "train": ("scintnode.train.cli", "train and evaluate a network on synthetic data"),
    "status": ("scintnode.status_cli", "show series, jobs and deliveries of a node"),
    "deliveries": ("scintnode.send_cli", "list and resubmit deliveries, dead letters included"),
    "audit": ("scintnode.audit_cli", "print the event log of one study: received ... delivered"),
}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="scintnode",
        description="DICOM node for nuclear-medicine and CT networks. Sub-commands:\n"
        + "\n".join(f"  {name:<11} {text}" for name, (_, text) in COMMANDS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="COMMAND")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    if not args:
        parser.print_help()
        return 2
    ns = parser.parse_args(args[:1])
    module = importlib.import_module(COMMANDS[ns.command][0])
    result: int = module.main(args[1:])
    return result


if __name__ == "__main__":
    raise SystemExit(main())
