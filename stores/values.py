"""How Python values are written into columns: JSON text and naive UTC timestamps.

A module of its own so that the table, shard and index modules can use them without importing
:mod:`stores.catalog` (which imports them; ``stores.catalog`` re-exports both).
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any


def now_utc() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)
