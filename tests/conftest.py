"""Shared fixtures. Feature-specific fixtures live in tests/fixtures/<name>.py and are listed here."""

pytest_plugins: list[str] = [
    "tests.fixtures.browser",
    "tests.fixtures.database",
    "tests.fixtures.domain",
    "tests.fixtures.erp",
    "tests.fixtures.live",
    "tests.fixtures.wechatpay_standin",
    "tests.fixtures.wechat_standin",
    "tests.fixtures.payments",
    "tests.fixtures.chat",
    "tests.fixtures.notices",
]
