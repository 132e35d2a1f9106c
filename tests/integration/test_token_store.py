"""The access token shared through the database (no Redis): several processes, one fetch."""

from __future__ import annotations

import threading

from bot.token_store import DatabaseTokenStore
from db import Database


def _count(api, name: str) -> int:
    return api.control("GET", "counters")[name]


def _follower(api) -> str:
    return api.control("POST", "users", {"wrote_recently": True})["openid"]


def _workers(database_url: str, app_id: str, make_wechat_client, n: int) -> list:
    """``n`` "processes": each with its own engine, store and lock, sharing one database row."""
    return [
        make_wechat_client(
            grant_endpoint="token", token_store=DatabaseTokenStore(Database.from_url(database_url), app_id)
        )
        for _ in range(n)
    ]


def _token_storm(database_url: str, wechat_api, make_wechat_client) -> None:
    workers = _workers(database_url, wechat_api.credentials.app_id, make_wechat_client, 3)
    openid = _follower(wechat_api)
    before = _count(wechat_api, "token_fetches")
    for w in workers:
        w.send_custom_text(openid, "你好")
    assert _count(wechat_api, "token_fetches") == before + 1  # the others read the shared row
    wechat_api.control("POST", "token/invalidate")
    threads = [threading.Thread(target=w.send_custom_text, args=(openid, "再见")) for w in workers * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert _count(wechat_api, "token_fetches") == before + 2  # twelve 40001s, one refresh
    assert len(wechat_api.control("GET", f"custom?openid={openid}")) == 3 + 12


def test_database_token_store_shares_one_token_across_processes(
    db, database_url, wechat_api, make_wechat_client
):
    _token_storm(database_url, wechat_api, make_wechat_client)


def test_database_token_store_on_postgresql_uses_an_advisory_lock(
    pg_db, pg_database_url, wechat_api, make_wechat_client
):
    _token_storm(pg_database_url, wechat_api, make_wechat_client)
