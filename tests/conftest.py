"""Shared fixtures. Feature-specific fixtures live in tests/fixtures/<name>.py and are listed here."""

pytest_plugins: list[str] = []
