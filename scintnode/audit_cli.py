"""`scintnode audit STUDY_UID`: the append-only event log of one study, oldest first.

received (from which AE and address), complete (by which layer), matched (rule set version and trace),
episode steps, inferred (model, version, weights hash, milliseconds), written (UIDs), delivered."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sqlalchemy import select

from scintnode.config import ConfigError, load_settings
from scintnode.db import Database, Event

# kinds whose detail is long; printed on their own indented lines
_MULTILINE = ("trace",)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scintnode audit", description=__doc__)
    parser.add_argument("study_uid", metavar="STUDY_UID")
    parser.add_argument("--config", type=Path, help="the node's YAML configuration (default: embedded defaults)")
    parser.add_argument("--json", action="store_true", help="one JSON object per event")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"error: {exc}")
        return 2
    db = Database(settings.database_url)
    db.create_schema()
    with db.session() as session:
        events = session.scalars(select(Event).where(Event.study_uid == args.study_uid).order_by(Event.id)).all()
    db.dispose()
    if not events:
        print(f"no events for study {args.study_uid}")
        return 1
    for event in events:
        if args.json:
            print(json.dumps({"at": event.at.isoformat(), "kind": event.kind, **event.detail}, sort_keys=True))
            continue
        inline = {k: v for k, v in event.detail.items() if k not in _MULTILINE}
        text = ", ".join(f"{k}={v}" for k, v in inline.items())
        print(f"{event.at:%Y-%m-%d %H:%M:%S.%f}"[:-3] + f" UTC  {event.kind:<24} {text}")
        for key in _MULTILINE:
            for line in event.detail.get(key, []):
                print(f"{'':>44}{line}")
    return 0
