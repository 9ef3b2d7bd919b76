"""The Flask app factory: SPEC §5 routes over a ``NodeView``."""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any, Final
from urllib.parse import urlsplit

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from flask_cors import CORS
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from status_app.node_view import NodeView, problems_first
from yl_core import protocol, timestamps
from yl_core.config import Config
from yl_core.urls import origin_of

bp = Blueprint("status", __name__)

SERVICE = "user-gui"
MAX_REQUEST_BYTES = 16 * 1024


def _view() -> NodeView:
    view: NodeView = current_app.extensions["yl_status_view"]
    return view


def _config() -> Config:
    config: Config = current_app.extensions["yl_status_config"]
    return config


def _json(data: Any, status: int = 200) -> Response:
    response = jsonify(data)
    response.status_code = status
    return response


@bp.get("/health")
def health() -> Response:
    config = _config()
    node_id = config.monitor.node_id
    verdict = _view().health(node_id)
    status = _view().status(node_id)
    body: dict[str, Any] = {
        "status": "healthy" if verdict.up else "unhealthy",
        "service": SERVICE,
        "node_id": node_id,
        "version": status.version if status else None,
        "timestamp": timestamps.utc_now_iso(),
    }
    if not verdict.up:
        body["reason"] = verdict.reason
        body["detail"] = verdict.detail
    return _json(body, 200 if verdict.up else 503)


@bp.get("/status")
def status() -> Response:
    """The node's latest snapshot as published, with its state and when that changed; 503
    whenever ``/health`` is: the snapshot is then the last word of a node that is down, and
    its ``status`` says why it is down (``lost``, ``stale``, ...), not the ``running`` the
    node last said of itself."""
    node_id = _config().monitor.node_id
    view = _view()
    payload = view.status_payload(node_id)
    verdict = view.health(node_id)
    state, changed = view.state_change(node_id)
    body: dict[str, Any] = {"status": "unknown", "node_id": node_id} if payload is None \
        else json.loads(payload)
    body.update(state=state, state_changed_at=changed, up=verdict.up)
    if not verdict.up:
        body["status"] = verdict.reason
        body["reason"] = verdict.reason
        body["detail"] = verdict.detail or "no status received from this node"
    return _json(body, 200 if verdict.up else 503)


@bp.get("/stats")
def stats() -> Response:
    config = _config()
    node_id = config.monitor.node_id
    message = _view().status(node_id)
    verdict = _view().health(node_id)
    reporter = message.reporter if message else None
    return _json({
        "running": verdict.up,
        "report_count": reporter.report_count if reporter else 0,
        "error_count": reporter.error_count if reporter else 0,
        "last_report_time": reporter.last_report_time if reporter else None,
        "config": {
            "node_id": node_id,
            "monitor_url": config.monitor.url,
            "interval": message.interval_s if message else config.monitor.report_interval,
        },
    })


@bp.get("/nodes")
def nodes() -> Response:
    view = _view()
    return _json({
        "broker": dict(zip(("connected", "reason"), view.broker, strict=True)),
        "node_id": _config().monitor.node_id,
        "timestamp": timestamps.utc_now_iso(),
        "nodes": problems_first(view.describe_all()),
        "counters": view.counters(),
    })


@bp.get("/nodes/<node_id>")
def node(node_id: str) -> Response:
    """The node as JSON; for a browser asking for HTML, its detail page."""
    if not protocol.is_valid_node_id(node_id):
        return _json({"error": "bad_request", "message": "invalid node id"}, 400)
    found = _view().describe(node_id)
    if found is None:
        return _json({"error": "not_found", "message": f"node {node_id} not seen"}, 404)
    if request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html":
        return _page("node.html")
    return _json(found)


@bp.get("/nodes/<node_id>/history")
def node_history(node_id: str) -> Response:
    """The node's last 24 h: state timeline, resources per minute, GUI flags."""
    if not protocol.is_valid_node_id(node_id):
        return _json({"error": "bad_request", "message": "invalid node id"}, 400)
    found = _view().history(node_id)
    if found is None:
        return _json({"error": "not_found", "message": f"node {node_id} not seen"}, 404)
    return _json(found)


@bp.get("/")
def live_view() -> Response:
    return _page("index.html")


def _page(name: str) -> Response:
    page = resources.files("status_app").joinpath(f"static/{name}").read_bytes()
    return Response(page, mimetype="text/html")


def _error(exc: HTTPException) -> Response:
    code = exc.code or 500
    name = (exc.name or "error").lower().replace(" ", "_")
    return _json({"error": name, "message": exc.description or ""}, code)


def _trusted_hosts(config: Config) -> list[str]:
    if config.local_server.trusted_hosts:
        return list(config.local_server.trusted_hosts)
    # The deployed monitor's application check asks for http://0.0.0.0:5502, which a
    # client on this machine reaches on loopback.
    hosts = {"localhost", "127.0.0.1", "[::1]", "::1", "0.0.0.0"}
    if config.local_server.host not in ("0.0.0.0", "::", ""):
        hosts.add(config.local_server.host)
    return sorted(hosts)


LOOPBACK_SPELLINGS: Final = ("localhost", "127.0.0.1", "::1", "0.0.0.0")
"""Ways to write this machine in a URL: a monitor on loopback announces its dashboard at
``http://0.0.0.0:5500`` while ``monitor.url`` says ``http://localhost:5500``."""


def cors_origins(config: Config) -> list[str]:
    """Origins whose pages may read the endpoints: the monitor's (its dashboard fetches
    ``/health`` from the browser; for a monitor on this machine, at any spelling of this
    machine) and ``local_server.cors_origins``; never ``*``."""
    origins = {origin_of(config.monitor.url), *config.local_server.cors_origins}
    monitor = urlsplit(config.monitor.url)
    if monitor.hostname in LOOPBACK_SPELLINGS:
        port = "" if monitor.port is None else f":{monitor.port}"
        origins.update(origin_of(f"{monitor.scheme}://{'[::1]' if name == '::1' else name}{port}")
                       for name in LOOPBACK_SPELLINGS)
    return sorted(origins)


def create_app(config: Config, view: NodeView | None = None) -> Flask:
    """An app serving ``view`` (a fresh, unfed one if not given) for ``config``'s node."""
    app = Flask(__name__, static_folder=None)
    app.config.update(
        DEBUG=False,
        TESTING=False,
        MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES,
        TRUSTED_HOSTS=_trusted_hosts(config),
        JSON_SORT_KEYS=False,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["yl_status_view"] = view or NodeView(topics=config.mqtt.topics)
    app.extensions["yl_status_config"] = config
    app.register_blueprint(bp)
    app.register_error_handler(HTTPException, _error)
    # Exact patterns: flask-cors reads an origin with brackets ([::1]) as a regular expression.
    exact = [re.compile(re.escape(origin) + r"\Z", re.IGNORECASE)
             for origin in cors_origins(config)]
    CORS(app, origins=exact, methods=["GET"], supports_credentials=False,
         always_send=False,
         max_age=600)

    @app.before_request
    def refuse_large_bodies() -> None:
        """No route reads a body, so none would hit MAX_CONTENT_LENGTH by itself."""
        length = request.content_length
        if length is not None and length > MAX_REQUEST_BYTES:
            raise RequestEntityTooLarge

    @app.after_request
    def no_store(response: Response) -> Response:
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    return app
