"""Event accounting (the delivery overview): every message's outcome per stage, counted per
source and minute, with roll-ups and retention, and tracking-plan violations with samples."""

from headwater.accounting.store import AccountingStore, SqliteAccountingStore, open_accounting
from headwater.accounting.tally import Tally

__all__ = ["AccountingStore", "SqliteAccountingStore", "Tally", "open_accounting"]
