"""The node's HTTP side: /healthz, /metrics (Prometheus) and a page for ops staff.

The page shows rule sets (active, candidate, history, diff), explains a dropped DICOM file, lists open
episodes, queues and dead letters (with resubmit), and a study's timeline. Plain HTML, no JavaScript
framework; it binds to loopback by default because it can resubmit deliveries."""

from __future__ import annotations

import difflib
import email.parser
import email.policy
import io
import json
import logging
import threading
from html import escape
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlparse

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import func, select

from scintnode.db import Delivery, Episode, EpisodeMember, Event, Job, RuleSetRecord
from scintnode.route.cli import explain_text
from scintnode.rules_keeper import NODE_EVENTS

if TYPE_CHECKING:
    from scintnode.node import Node

log = logging.getLogger(__name__)

MAX_UPLOAD = 64 * 1024 * 1024

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1200px}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ddd;padding:.25em .5em;text-align:left}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.85em}.bad{color:#a00}.ok{color:#070}
.ins{background:#dfd}.del{background:#fdd}
"""


class OpsServer:
    def __init__(self, node: Node) -> None:
        self.node = node
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1]) if self._server else 0

    def start(self) -> None:
        http = self.node.settings.http
        handler = type("Handler", (_Handler,), {"node": self.node})
        try:
            self._server = ThreadingHTTPServer((http.bind_address, http.port), handler)
        except OSError as exc:  # DICOM service matters more than the page: run without it
            log.error("ops page / metrics not started on %s:%d: %s", http.bind_address, http.port, exc)
            return
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="scintnode-http", daemon=True)
        self._thread.start()
        log.info("ops page, /healthz and /metrics on http://%s:%d/", http.bind_address, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _Handler(BaseHTTPRequestHandler):
    node: Node

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s", format % args)

    # -- routing ---------------------------------------------------------------------------------------
    def do_GET(self) -> None:
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            if url.path == "/healthz":
                self._health()
            elif url.path == "/metrics":
                self._send(HTTPStatus.OK, generate_latest(self.node.metrics.registry), CONTENT_TYPE_LATEST)
            elif url.path == "/":
                self._page("scintnode", self._overview(query.get("diff")))
            elif url.path == "/study":
                self._page("Study timeline", self._timeline(query.get("uid", "")))
            else:
                self._page("Not found", "<p>No such page.</p>", HTTPStatus.NOT_FOUND)
        except Exception:  # a broken page must not take the node's HTTP thread down
            log.exception("ops page failed for %s", url.path)
            self._page("Error", "<p class=bad>The page failed; see the node log.</p>", HTTPStatus.INTERNAL_SERVER_ERROR)

    def do_POST(self) -> None:
        url = urlparse(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_UPLOAD:
            self._page(
                "Too large",
                f"<p class=bad>Uploads are limited to {MAX_UPLOAD} bytes.</p>",
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            )
            return
        body = self.rfile.read(length)
        if url.path == "/explain":
            self._page("Explain", self._explain(body))
        elif url.path == "/deliveries/resubmit":
            form = {k: v[-1] for k, v in parse_qs(body.decode("ascii", "replace")).items()}
            ids = [int(form["id"])] if form.get("id", "").isdigit() else None
            count = self.node.dispatcher.resubmit(ids)
            self.node.housekeeping.run_soon("dispatch")
            self._page("Resubmitted", f"<p class=ok>{count} dead letter(s) resubmitted.</p><p><a href='/'>back</a></p>")
        else:
            self._page("Not found", "<p>No such action.</p>", HTTPStatus.NOT_FOUND)

    # -- endpoints -------------------------------------------------------------------------------------
    def _health(self) -> None:
        checks: dict[str, Any] = {"rule_set": self.node.rule_set.version}
        healthy = True
        try:
            with self.node.db.session() as session:
                checks["pending_jobs"] = session.scalar(select(func.count()).where(Job.state == "pending")) or 0
                checks["dead_letters"] = session.scalar(select(func.count()).where(Delivery.state == "dead")) or 0
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"], healthy = f"error: {exc}", False
        listening = self.node.receiver.listening
        checks["dicom"] = f"listening on {self.node.port}" if listening else "not listening"
        healthy = healthy and listening
        free = self.node.spool.free_bytes()
        checks["spool_free_bytes"] = free
        if free < self.node.spool.min_free_bytes:
            checks["spool"], healthy = "below reserve: new instances are refused", False
        body = json.dumps({"status": "ok" if healthy else "degraded", **checks}, indent=1).encode()
        self._send(HTTPStatus.OK if healthy else HTTPStatus.SERVICE_UNAVAILABLE, body, "application/json")

    def _overview(self, diff_version: str | None) -> str:
        node = self.node
        parts: list[str] = [
            f"<p>AE title <b>{escape(node.settings.node.ae_title)}</b> on DICOM port {node.port}. "
            "<a href='/metrics'>metrics</a> · <a href='/healthz'>health</a></p>"
        ]
        with node.db.session() as session:
            parts.append(self._rule_sets(session, diff_version))
            parts.append(
                "<h2 id=explain>Explain a DICOM file</h2><form method=post action=/explain enctype=multipart/form-data>"
                "<input type=file name=file required> <button type=submit>Explain</button></form>"
            )
            parts.append(self._episodes(session))
            parts.append(self._queues(session))
            parts.append(
                "<h2 id=study>Study timeline</h2><form method=get action=/study>"
                "<input name=uid size=70 placeholder='Study Instance UID' required> <button>Show</button></form>"
            )
        return "".join(parts)

    def _rule_sets(self, session: Any, diff_version: str | None) -> str:
        node = self.node
        active = node.rule_set
        rows = [
            f"<h2 id=rules>Rule sets</h2><p>Active: <code>{active.version[:16]}</code> from "
            f"{escape(str(active.directory))}, {len(active.rules)} rule(s)</p><ul>"
        ]
        rows += [f"<li>{escape(rule.summary())}</li>" for rule in active.rules]
        rows.append("</ul>")
        if node.shadow is not None:
            candidate = node.shadow.active
            rows.append(
                f"<p>Candidate (shadow mode, acts on nothing): <code>{candidate.version[:16]}</code> from "
                f"{escape(str(candidate.directory))}</p>"
            )
            differs = session.scalars(
                select(Event).where(Event.kind == "shadow-differs").order_by(Event.id.desc()).limit(20)
            ).all()
            rows.append(
                f"<p>Decisions that would differ (latest {len(differs)}):</p><table>"
                "<tr><th>at</th><th>series</th><th>active</th><th>candidate</th></tr>"
            )
            rows += [
                f"<tr><td>{e.at:%Y-%m-%d %H:%M:%S}</td><td>{escape(str(e.detail['series_uid']))}</td>"
                f"<td>{escape(str(e.detail['active']))}</td><td>{escape(str(e.detail['candidate']))}</td></tr>"
                for e in differs
            ]
            rows.append("</table>")
        history = session.scalars(select(RuleSetRecord).order_by(RuleSetRecord.first_active_at.desc())).all()
        rows.append("<p>History:</p><table><tr><th>version</th><th>first active</th><th>last active</th><th></th></tr>")
        for record in history:
            link = "" if record.version == active.version else f"<a href='/?diff={record.version}#rules'>diff</a>"
            rows.append(
                f"<tr><td><code>{record.version[:16]}</code></td><td>{record.first_active_at:%Y-%m-%d %H:%M:%S}"
                f"</td><td>{record.last_active_at:%Y-%m-%d %H:%M:%S}</td><td>{link}</td></tr>"
            )
        rows.append("</table>")
        refused = session.scalars(
            select(Event)
            .where(Event.study_uid == NODE_EVENTS, Event.kind == "rules-refused")
            .order_by(Event.id.desc())
            .limit(3)
        ).all()
        for event in refused:
            rows.append(
                f"<p class=bad>Refused at {event.at:%Y-%m-%d %H:%M:%S}: "
                f"{escape('; '.join(event.detail.get('errors', [])))}</p>"
            )
        if diff_version:
            rows.append(self._diff(session, diff_version, active.version))
        return "".join(rows)

    def _diff(self, session: Any, old_version: str, new_version: str) -> str:
        old, new = session.get(RuleSetRecord, old_version), session.get(RuleSetRecord, new_version)
        if old is None or new is None:
            return "<p class=bad>Unknown rule set version.</p>"
        lines: list[str] = []
        for name in sorted(set(old.files) | set(new.files)):
            lines += difflib.unified_diff(
                old.files.get(name, "").splitlines(),
                new.files.get(name, "").splitlines(),
                f"{old_version[:12]}/{name}",
                f"{new_version[:12]}/{name}",
                lineterm="",
            )
        shown = "\n".join(
            f"<span class={'ins' if line.startswith('+') else 'del' if line.startswith('-') else 'ctx'}>"
            f"{escape(line)}</span>"
            for line in lines
        )
        return f"<p>Diff {old_version[:12]} → {new_version[:12]} (active):</p><pre id=diff>{shown or 'no change'}</pre>"

    def _episodes(self, session: Any) -> str:
        episodes = session.scalars(select(Episode).where(Episode.state == "open").order_by(Episode.deadline_at)).all()
        rows = [
            f"<h2 id=episodes>Open episodes ({len(episodes)})</h2><table><tr><th>#</th><th>rule</th>"
            "<th>patient</th><th>slots filled</th><th>deadline (UTC)</th></tr>"
        ]
        for episode in episodes:
            slots = sorted(
                {m.slot for m in session.scalars(select(EpisodeMember).where(EpisodeMember.episode_id == episode.id))}
            )
            rows.append(
                f"<tr><td>{episode.id}</td><td>{escape(episode.rule_name)}</td>"
                f"<td>{escape(episode.join_key)}</td><td>{escape(', '.join(slots))}</td>"
                f"<td>{episode.deadline_at:%Y-%m-%d %H:%M:%S}</td></tr>"
            )
        rows.append("</table>")
        return "".join(rows)

    def _queues(self, session: Any) -> str:
        jobs = {k: v for k, v in session.execute(select(Job.state, func.count()).group_by(Job.state))}
        deliveries = session.execute(
            select(Delivery.destination, Delivery.state, func.count()).group_by(Delivery.destination, Delivery.state)
        ).all()
        rows = [
            "<h2 id=queues>Queues</h2><p>Jobs: "
            + (", ".join(f"{escape(s)} {n}" for s, n in sorted(jobs.items())) or "none")
            + "</p>"
            "<table><tr><th>destination</th><th>state</th><th>deliveries</th></tr>"
        ]
        rows += [f"<tr><td>{escape(d)}</td><td>{escape(s)}</td><td>{n}</td></tr>" for d, s, n in deliveries]
        rows.append("</table>")
        dead = session.scalars(select(Delivery).where(Delivery.state == "dead").order_by(Delivery.id)).all()
        rows.append(f"<h2 id=dead>Dead letters ({len(dead)})</h2>")
        if dead:
            rows.append(
                "<form method=post action=/deliveries/resubmit><button>Resubmit all</button></form>"
                "<table><tr><th>id</th><th>destination</th><th>status</th><th>error</th><th></th></tr>"
            )
            rows += [
                f"<tr><td>{d.id}</td><td>{escape(d.destination)}</td><td>{escape(d.last_status)}</td>"
                f"<td>{escape(d.last_error[:200])}</td><td><form method=post action=/deliveries/resubmit>"
                f"<input type=hidden name=id value={d.id}><button>Resubmit</button></form></td></tr>"
                for d in dead
            ]
            rows.append("</table>")
        return "".join(rows)

    def _timeline(self, study_uid: str) -> str:
        with self.node.db.session() as session:
            events = session.scalars(select(Event).where(Event.study_uid == study_uid).order_by(Event.id)).all()
        if not events:
            return f"<p>No events for study <code>{escape(study_uid)}</code>.</p>"
        rows = [
            f"<p>Study <code>{escape(study_uid)}</code></p><table id=timeline>"
            "<tr><th>at (UTC)</th><th>event</th><th>detail</th></tr>"
        ]
        for event in events:
            detail = "<br>".join(f"{escape(k)}: {escape(str(v))}" for k, v in event.detail.items())
            rows.append(
                f"<tr><td>{event.at:%Y-%m-%d %H:%M:%S.%f}</td><td>{escape(event.kind)}</td><td>{detail}</td></tr>"
            )
        rows.append("</table>")
        return "".join(rows)

    def _explain(self, body: bytes) -> str:
        content = _uploaded_file(self.headers.get("Content-Type", ""), body)
        if content is None:
            return "<p class=bad>Send the DICOM file as the form field <code>file</code>.</p>"
        try:
            header = dcmread(io.BytesIO(content), stop_before_pixels=True, force=True)
            if "SOPClassUID" not in header:
                raise InvalidDicomError("no SOP Class UID: not a DICOM object")
        except (InvalidDicomError, ValueError, TypeError, EOFError, OSError) as exc:
            return f"<p class=bad>Not a readable DICOM file: {escape(str(exc))}</p>"
        text = explain_text(self.node.rule_set, header)
        return f"<pre id=explanation>{escape(text)}</pre><p><a href='/'>back</a></p>"

    # -- plumbing --------------------------------------------------------------------------------------
    def _page(self, title: str, body: str, status: HTTPStatus = HTTPStatus.OK) -> None:
        html = (
            f"<!doctype html><html><head><meta charset=utf-8><title>{escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>{body}</body></html>"
        )
        self._send(status, html.encode("utf-8"), "text/html; charset=utf-8")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _uploaded_file(content_type: str, body: bytes) -> bytes | None:
    """The `file` field of a multipart/form-data body (the stdlib's cgi module is gone in 3.13)."""
    if not content_type.startswith("multipart/form-data"):
        return None
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == "file":
            payload = part.get_payload(decode=True)
            return payload if isinstance(payload, bytes) else None
    return None
