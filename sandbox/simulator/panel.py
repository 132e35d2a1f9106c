"""The simulator's side panel: what the sandbox ERP received, the outbox (as ``outbox status`` shows
it, plus the latest events and their deliveries), and the stand-ins' request logs."""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from db import CHINA_TZ, Database, utcnow
from erp_sync import admin
from erp_sync.outbox import OutboxEvent
from erp_sync.subscribers import subscribers
from sandbox import erp_receiver
from sandbox.wechat_api import WeChatApiState
from sandbox.wechatpay import StandIn

RECENT = 40


def _local(value: dt.datetime | None) -> str | None:
    return value.astimezone(CHINA_TZ).strftime("%H:%M:%S") if value else None


def _clock(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, CHINA_TZ).strftime("%H:%M:%S")


def erp_view(app: Flask) -> list[dict[str, Any]]:
    records = erp_receiver.inbox(app).records()
    return [{k: v for k, v in r.items() if k != "payload"} | {"time": _clock(r["at"])} for r in records]


def outbox_view(app: Flask, db: Database) -> dict[str, Any]:
    now = utcnow()
    with db.transaction() as s:
        report = admin.status(s, now)
        events = list(s.scalars(
            select(OutboxEvent).options(selectinload(OutboxEvent.deliveries))
            .order_by(OutboxEvent.created_at.desc(), OutboxEvent.id.desc()).limit(RECENT)
        ))
        status = {name: {"counts": info.counts, "due_now": info.due_now, "backing_off": info.backing_off,
                         "failing": [{"event_id": d.event_id, "attempts": d.attempts,
                                      "last_error": d.last_error} for d in info.failing]}
                  for name, info in report.items()}
        recent = [{
            "id": e.id, "topic": e.topic, "seq": e.seq, "time": _local(e.created_at),
            "bill": (e.payload.get("bill") or {}).get("number"),
            "deliveries": {d.subscriber: {"status": d.status, "attempts": d.attempts,
                                          "last_error": d.last_error} for d in e.deliveries},
        } for e in events]
    for name, sub in subscribers(app).items():
        status.setdefault(name, {"counts": {}, "due_now": 0, "backing_off": 0, "failing": []})
        status[name]["not_ready"] = sub.not_ready_reason()
    return {"subscribers": status, "events": recent}


def logs_view(wx: WeChatApiState, pay: StandIn) -> dict[str, Any]:
    wx_requests = [{"time": _clock(r["at"]), "method": r["method"], "path": r["path"], "status": r["status"],
                    "errcode": r["errcode"]} for r in wx.requests_for()[-RECENT:]]
    pay_requests = [{"time": str(r.get("at", ""))[11:19], "method": r["method"], "path": r["path"],
                     "status": r["status"], "code": r.get("code")} for r in pay.received()[-RECENT:]]
    notifications = [{"time": str(d.get("at", ""))[11:19], "event_type": d.get("event_type"),
                      "ref": d.get("ref"), "status": d.get("status"), "attempt": d.get("attempt")}
                     for d in pay.deliveries()[-RECENT:]]
    return {"wechat_api": wx_requests[::-1], "wechatpay": pay_requests[::-1],
            "wechatpay_notifications": notifications[::-1]}
