"""What a message means: the router, the customer and staff commands, and the grammar table."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Plug the router into the /wechat endpoint (bot/), register chat tasks and the staff CLI."""
    from bot.endpoint import ROUTER_KEY
    from handlers import cli, tasks
    from handlers.router import route

    app.extensions[ROUTER_KEY] = route
    tasks.register()
    cli.register_cli(app)
