"""The chat simulator at ``/sandbox/`` (sandbox mode, with both stand-ins mounted on the app's port).

``init_app(app)`` is called by app.py's ``_mount_sandbox`` after mounting the stand-ins. It
registers the page and its JSON API, the built-in ERP receiver (sandbox/erp_receiver.py), the
``flask sandbox seed`` command, and a WSGI shim that lets a simulated phone's in-page browser count
as "inside WeChat"; when the development server starts it seeds demo data into an empty database and
tells the Official Account stand-in who follows the account.
"""

from __future__ import annotations

import logging
from typing import Any

import click
from flask import Flask
from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger("renopay.sandbox.simulator")

WECHAT_UA_SUFFIX = " MicroMessenger/8.0.50.2701(0x28003252) NetType/WIFI Language/zh_CN RenoPaySandbox"


class SimulatedWeChatBrowser:
    """WSGI shim: a pay-page request from a simulated phone's browser frame carries WeChat's
    user agent, as it would inside WeChat. Only installed in sandbox mode; top-level browser tabs
    (``Sec-Fetch-Dest: document``) stay ordinary browsers."""

    def __init__(self, wsgi_app: Any, cookie_name: str):
        self.wsgi_app = wsgi_app
        self.marker = f"{cookie_name}=1"

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if (
            environ.get("PATH_INFO", "").startswith("/pay/")
            and self.marker in environ.get("HTTP_COOKIE", "").replace(" ", "").split(";")
            and environ.get("HTTP_SEC_FETCH_DEST", "iframe") != "document"
        ):
            environ["HTTP_USER_AGENT"] = environ.get("HTTP_USER_AGENT", "Mozilla/5.0") + WECHAT_UA_SUFFIX
        return self.wsgi_app(environ, start_response)


def init_app(app: Flask) -> None:
    from sandbox import erp_receiver, seed, wechat_api, wechatpay
    from sandbox.simulator import views
    from sandbox.simulator.feed import ConversationLog

    erp_receiver.init_app(app)
    seed.register_cli(app)
    mounts = app.extensions.get("renopay.sandbox_mounts") or {}
    pay_app, wx_app = mounts.get("/sandbox/wechatpay"), mounts.get("/sandbox/wechat-api")
    if pay_app is None or wx_app is None:
        return  # the stand-ins run elsewhere (tests): no simulator on this app
    wx = wechat_api.get_state(wx_app)
    app.extensions[views.EXTENSION] = views.Simulator(wx.credentials, wx, wechatpay.standin_of(pay_app),
                                                      ConversationLog())
    app.register_blueprint(views.bp)
    app.wsgi_app = SimulatedWeChatBrowser(app.wsgi_app, views.WECHAT_MARK_COOKIE)  # type: ignore[method-assign]
    if _serving():
        seed.seed_app(app)
    sync_followers(app)


def sync_followers(app: Flask) -> int:
    """Every openid RenoPay has bound follows the account in the (in-memory) stand-in, as it still
    would on WeChat after a restart. Returns how many were added."""
    from sandbox.simulator import identities, views

    wx = app.extensions[views.EXTENSION].wx
    try:
        openids = identities.known_openids(app.extensions["renopay.db"])
    except SQLAlchemyError:
        return 0  # not migrated yet (e.g. `flask db upgrade` itself builds the app)
    added = [o for o in openids if wx.user(o) is None]
    for openid in added:
        wx.add_user(openid, following=True)
    return len(added)


def _serving() -> bool:
    """True under ``flask run`` (what ``make run`` uses), not in tests or other commands."""
    ctx = click.get_current_context(silent=True)
    return ctx is not None and ctx.info_name == "run"
