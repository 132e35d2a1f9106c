"""Imports every module that defines tables, so ``Base.metadata`` is complete (Alembic, tests).
Add a line here when a package gains models."""

import bot.models
import bot.notice_models
import bot.token_store
import erp_sync.outbox
import handlers.models
import handlers.staff_refund
import payments.models
import payments.notifications
import payments.numbers
import payments.reconcile_models

__all__ = ["bot", "erp_sync", "handlers", "payments"]
