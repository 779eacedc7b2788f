"""`scintnode status`: what a node holds and is doing — open series, recent jobs, the delivery queue."""

from __future__ import annotations

import argparse
from pathlib import Path

from sqlalchemy import func, select

from scintnode.config import ConfigError, load_settings
from scintnode.db import Database, Delivery, Episode, EpisodeMember, Job, Series


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scintnode status", description="Show a node's series, jobs, deliveries.")
    parser.add_argument("--config", type=Path, help="the node's YAML configuration (default: embedded defaults)")
    parser.add_argument("--limit", type=int, default=20, help="recent jobs to list")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(exc)
        return 2
    db = Database(settings.database_url)
    db.create_schema()
    with db.session() as session:
        open_series = session.scalars(
            select(Series).where(Series.completed_at.is_(None)).order_by(Series.last_received_at)
        ).all()
        print(f"Open series (waiting for completion): {len(open_series)}")
        for s in open_series:
            released = "released" if s.released_at else "association open or aborted"
            last = f"{s.last_received_at:%Y-%m-%d %H:%M:%S}"
            print(f"  {s.series_uid}  {s.modality:<3} {s.instance_count:>5} inst  last {last}  {released}")
        episodes = session.scalars(select(Episode).where(Episode.state == "open").order_by(Episode.deadline_at)).all()
        print(f"Open episodes: {len(episodes)}")
        for episode in episodes:
            filled: dict[str, int] = {}
            for member in session.scalars(select(EpisodeMember).where(EpisodeMember.episode_id == episode.id)):
                filled.setdefault(member.slot, 0)
                filled[member.slot] += 1
            slots = ", ".join(f"{slot} ({n} inst)" for slot, n in sorted(filled.items())) or "none"
            again = f", re-opened after job #{episode.last_job_id}" if episode.last_job_id else ""
            print(
                f"  #{episode.id:<5} rule {episode.rule_name:<28} patient {episode.join_key:<16} filled: {slots}; "
                f"deadline {episode.deadline_at:%Y-%m-%d %H:%M:%S} UTC{again}"
            )
        counts = {k: v for k, v in session.execute(select(Job.state, func.count()).group_by(Job.state))}
        print("Jobs: " + (", ".join(f"{state} {n}" for state, n in sorted(counts.items())) or "none"))
        for job in session.scalars(select(Job).order_by(Job.id.desc()).limit(args.limit)):
            result = job.result or {}
            what = result.get("predicted", job.error[:60] if job.error else "")
            print(f"  #{job.id:<5} {job.state:<8} {job.network:<18} rule {job.rule_name:<20} {what}")
        queue = {k: v for k, v in session.execute(select(Delivery.state, func.count()).group_by(Delivery.state))}
        print("Deliveries: " + (", ".join(f"{state} {n}" for state, n in sorted(queue.items())) or "none"))
    db.dispose()
    return 0
