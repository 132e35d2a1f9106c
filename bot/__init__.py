"""The WeChat Official Account channel: endpoint, crypto, parsing, replies, outbound client, tokens."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from bot.client import WeChatApiClient

WECHAT_CLIENT_KEY = "renopay.wechat"


def wechat_client(app: Flask | None = None) -> WeChatApiClient:
    """The app's Official Account API client (built once from settings, shared by threads)."""
    from flask import current_app

    target = app or current_app
    client = target.extensions.get(WECHAT_CLIENT_KEY)
    if client is None:
        client = target.extensions.setdefault(WECHAT_CLIENT_KEY, _build_client(target))
    return client  # type: ignore[no-any-return]


def _build_client(app: Flask) -> WeChatApiClient:
    from bot.client import WeChatApiClient
    from bot.token_store import DatabaseTokenStore
    from bot.tokens import RedisTokenStore, TokenStore

    s = app.extensions["renopay.settings"]
    # Shared by every process (gunicorn workers and the scheduler worker): Redis when configured,
    # otherwise the database — never a per-process token that would invalidate the others'.
    store: TokenStore = (RedisTokenStore.from_url(s.redis_url, s.wechat_app_id) if s.redis_url
                         else DatabaseTokenStore(app.extensions["renopay.db"], s.wechat_app_id))
    return WeChatApiClient(s.wechat_app_id, s.wechat_app_secret, api_base=s.wechat_api_base,
                           oauth_base=s.wechat_oauth_base, token_store=store)


def init_app(app: Flask) -> None:
    """The /wechat endpoint, the chat task worker, the menu CLI and the bill notice subscriber."""
    from apscheduler.triggers.interval import IntervalTrigger

    from bot import menu, notices
    from bot.endpoint import KICKER_KEY, bp
    from bot.tasks import TaskKicker, run_due_tasks
    from erp_sync import register_job

    app.register_blueprint(bp)
    app.extensions[KICKER_KEY] = TaskKicker(app)
    # The kicker runs tasks right after the reply; this sweep catches what a crashed process left.
    register_job(app, "chat_tasks", lambda: run_due_tasks(app), IntervalTrigger(minutes=1))
    # The worker keeps the shared access token fresh ahead of expiry; web workers then only read it.
    register_job(app, "token_refresh", lambda: wechat_client(app).refresher.refresh_if_due())
    menu.register_cli(app)
    notices.init_app(app)
