"""`scintnode deliveries`: look into the send queue of a node and put dead letters back into it.

Opens the node's index read-mostly beside the running node (SQLite WAL lets it read while the node writes)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from scintnode.config import ConfigError, load_settings
from scintnode.db import Database
from scintnode.send import DeliveryRow, list_deliveries, resubmit_deliveries

STATES = ("pending", "sent", "dead")
COLUMNS = (
    "ID",
    "DESTINATION",
    "STATE",
    "ATTEMPTS",
    "LAST STATUS",
    "NEXT ATTEMPT (UTC)",
    "SOP INSTANCE UID",
    "STUDY UID",
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scintnode deliveries", description="List and resubmit deliveries of results to PACS."
    )
    parser.add_argument("--config", type=Path, help="node configuration YAML (default: built-in settings)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{list,resubmit}")
    listing = commands.add_parser("list", help="show deliveries, oldest first")
    listing.add_argument("--state", choices=STATES, help="only deliveries in this state")
    listing.add_argument("--errors", action="store_true", help="print each delivery's last error under it")
    resubmit = commands.add_parser("resubmit", help="put dead letters back in the queue, attempts reset")
    resubmit.add_argument("ids", nargs="*", type=int, metavar="ID", help="delivery ids")
    resubmit.add_argument("--all-dead", action="store_true", help="every dead letter")
    return parser


def _open(config: Path | None) -> Database:
    settings = load_settings(config)
    url = settings.database_url
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.is_file():
            raise ConfigError(f"no node index at {path}: check storage.root in the configuration")
    return Database(url)


def _table(rows: Sequence[DeliveryRow], errors: bool) -> str:
    cells = [
        (
            str(row.id),
            row.destination,
            row.state,
            str(row.attempts),
            row.last_status or "-",
            row.next_attempt_at.isoformat(sep=" ", timespec="seconds") if row.state == "pending" else "-",
            row.sop_instance_uid,
            row.study_uid,
        )
        for row in rows
    ]
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)).rstrip()]
    for row, line in zip(rows, cells, strict=True):
        lines.append("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        if errors and row.last_error:
            lines.append(f"    {row.last_error}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "resubmit" and bool(args.ids) == args.all_dead:
        parser.error("resubmit takes delivery ids or --all-dead, not both or neither")
    try:
        db = _open(args.config)
    except ConfigError as exc:
        print(f"scintnode deliveries: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "list":
            rows = list_deliveries(db, args.state)
            if not rows:
                print("no deliveries" + (f" in state {args.state}" if args.state else ""))
                return 0
            print(_table(rows, args.errors))
            return 0
        ids = None if args.all_dead else list(dict.fromkeys(args.ids))
        count = resubmit_deliveries(db, ids)
        print(f"resubmitted {count} dead letter(s)")
        if ids is not None and count < len(ids):
            print(
                f"{len(ids) - count} id(s) were not dead letters (unknown, pending or already sent)",
                file=sys.stderr,
            )
            return 1
        return 0
    except SQLAlchemyError as exc:
        print(f"scintnode deliveries: cannot read the node index {db.url}: {exc}", file=sys.stderr)
        return 2
    finally:
        db.dispose()
