"""``flask --app app staff invite --role finance|sales|admin``: a one-time code to bind a staff member."""

from __future__ import annotations

import click
from flask import Flask

from db import current_db
from handlers.identity import create_invite
from payments.models import StaffRole


def register_cli(app: Flask) -> None:
    @app.cli.group("staff")
    def staff_group() -> None:
        """Staff members of the chat channel."""

    @staff_group.command("invite")
    @click.option("--role", type=click.Choice([r.value for r in StaffRole]), required=True)
    @click.option("--name", default=None, help="the staff member's name, shown in replies and the audit log")
    @click.option("--days", default=7, show_default=True, type=click.IntRange(1, 90))
    def staff_invite(role: str, name: str | None, days: int) -> None:
        """Print a one-time invite code; the staff member sends “员工 <code>” to the account."""
        with current_db().transaction() as session:
            code = create_invite(session, StaffRole(role), name=name, days=days)
        click.echo(f"invite code: {code}")
        click.echo(f"the new {role} staff member sends to the Official Account:  员工 {code}")
        click.echo(f"valid for {days} days, once")
