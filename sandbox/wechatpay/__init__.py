"""WeChat Pay APIv3 stand-in: a WSGI app speaking the real wire protocol, with a control API for tests.

``create_app(credentials)`` returns a Flask app; its :class:`StandIn` (the Python-level control API) is
``app.extensions["wechatpay_standin"]`` (or :func:`standin_of`). See docs/sandbox.md.
"""

from __future__ import annotations

import flask

from sandbox.keys import SandboxCredentials

from .control import register_control
from .routes import register_api
from .standin import StandIn

__all__ = ["StandIn", "create_app", "standin_of"]


def create_app(
    credentials: SandboxCredentials, *, retry_scale: float = 1.0, mode: str = "public_key"
) -> flask.Flask:
    """The stand-in as a WSGI app (relative routes: it can be mounted under any prefix)."""
    app = flask.Flask(__name__)
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    standin = StandIn(credentials, retry_scale=retry_scale, mode=mode)
    app.extensions["wechatpay_standin"] = standin
    register_api(app, standin)
    register_control(app, standin)
    return app


def standin_of(app: flask.Flask) -> StandIn:
    standin = app.extensions["wechatpay_standin"]
    assert isinstance(standin, StandIn)
    return standin
