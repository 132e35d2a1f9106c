"""WeChat Pay error answers: ``{"code": …, "message": …}`` with WeChat's HTTP status and code."""

from __future__ import annotations

import datetime as dt
from typing import Any

CST = dt.timezone(dt.timedelta(hours=8), "Asia/Shanghai")


def now_cst() -> dt.datetime:
    return dt.datetime.now(CST).replace(microsecond=0)


def rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(CST).replace(microsecond=0).isoformat()


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, detail: dict[str, Any] | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.detail = status, code, message, detail

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail:
            body["detail"] = self.detail
        return body


def param_error(message: str, field: str | None = None) -> ApiError:
    detail = {"field": field, "location": "body"} if field else None
    return ApiError(400, "PARAM_ERROR", message, detail)


def invalid_request(message: str) -> ApiError:
    return ApiError(400, "INVALID_REQUEST", message)


def order_not_exist() -> ApiError:
    return ApiError(404, "ORDER_NOT_EXIST", "订单不存在")
