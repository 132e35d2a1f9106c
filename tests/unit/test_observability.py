"""Logs never carry secrets or whole openids; /metrics speaks Prometheus text."""

from __future__ import annotations

import json
import logging

import pytest

from observability import JsonFormatter, mask


def test_mask_hides_openids_tokens_and_authorization() -> None:
    line = (
        "user oUpF8uMuAJO_M2pxb1Q9zNjWeS6o paid; GET /cgi-bin/token?appid=wx1&secret=abcdef&access_token=XYZ "
        'Authorization: WECHATPAY2-SHA256-RSA2048 mchid="1",signature="c2ln"'
    )
    masked = mask(line)
    assert "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o" not in masked and "o***eS6o" in masked
    assert "abcdef" not in masked and "XYZ" not in masked and "c2ln" not in masked


def test_json_formatter_emits_one_json_object_with_request_id() -> None:
    record = logging.LogRecord(
        "renopay", logging.INFO, __file__, 1, "paid by %s", ("oAbcdefghijkl1234",), None
    )
    entry = json.loads(JsonFormatter().format(record))
    assert entry["msg"] == "paid by o***1234"
    assert entry["level"] == "INFO" and entry["request_id"] == "-"


def test_the_development_servers_access_log_is_masked(caplog: pytest.LogCaptureFixture) -> None:
    """`make run` serves through werkzeug, whose access log prints whole request lines."""
    from flask import Flask
    from werkzeug._internal import _log

    import observability

    observability.init_app(Flask(__name__))
    observability.init_app(Flask(__name__))  # a second app adds no second filter
    werkzeug_log = logging.getLogger("werkzeug")
    assert werkzeug_log.filters.count(observability._DEV_SERVER_MASK) == 1
    with caplog.at_level(logging.INFO, logger="werkzeug"):
        line = "POST /cgi-bin/message/template/send?access_token=TOKEN123&openid=oSandbox-Customer-Chen"
        _log("info", '%s - - [%s] "%s" %s %s', "127.0.0.1", "27/Nov/2026 03:27:11", line, "200", "-")
    logged = caplog.records[-1].getMessage()
    assert "TOKEN123" not in logged and "access_token=***" in logged and "o***Chen" in logged
