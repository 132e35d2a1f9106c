"""API fault injection: the next K calls (optionally under a path prefix) fail, stall or arrive altered."""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass
from typing import Any

from .errors import ApiError

API_FAULT_KINDS = ("error500", "error429", "slow", "altered")


@dataclass
class ApiFault:
    kind: str  # error500 | error429 | slow | altered
    count: int = 1  # how many matching calls it affects
    path_prefix: str = ""  # e.g. "/v3/pay/transactions" (matched against the request path)
    seconds: float = 0.0  # "slow": sleep this long before answering
    after: bool = False  # error500/error429: process the request first, then fail (ambiguous outcome)

    def __post_init__(self) -> None:
        if self.kind not in API_FAULT_KINDS:
            raise ValueError(f"kind must be one of {API_FAULT_KINDS}")
        if self.count < 1:
            raise ValueError("count must be >= 1")

    def error(self) -> ApiError:
        if self.kind == "error429":
            return ApiError(429, "FREQUENCY_LIMITED", "频率超限，请降低请求频率")
        return ApiError(500, "SYSTEM_ERROR", "系统错误")


class ApiFaults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[ApiFault] = []

    def add(self, **fields: Any) -> ApiFault:
        rule = ApiFault(**fields)
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def take(self, path: str) -> ApiFault | None:
        """Consume one use of the first rule matching ``path``."""
        with self._lock:
            for rule in self._rules:
                if path.startswith(rule.path_prefix):
                    rule.count -= 1
                    if rule.count <= 0:
                        self._rules.remove(rule)
                    return rule
        return None

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(rule) for rule in self._rules]


def alter(text: str) -> str:
    """Change a signed body "in transit": flip the last character of the first string value."""
    try:
        data = json.loads(text)
    except ValueError:
        return text + " "
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(value, str) and value:
                data[key] = value[:-1] + ("0" if value[-1] != "0" else "1")
                return json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        data["altered"] = True
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text + " "
