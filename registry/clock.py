"""The database's clock, as Unix seconds: the one clock every lease expiry and heartbeat is
set by and compared with, so that nodes whose own clocks disagree still agree on who holds a
room. (A node ahead of the others would otherwise see live leases as lapsed and take rooms
from their owners; one behind would set leases that outlive it.)

`clock_timestamp()` in PostgreSQL, not `now()`: the time of the call, not of the
transaction's start. SQLite has no server of its own: its clock is the calling process's.
Written out per dialect because the columns hold Unix seconds, and SQLAlchemy's `func.now()`
gives each dialect's own timestamp type.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement


class DatabaseClock(FunctionElement[float]):
    type = sa.Float()
    inherit_cache = True


# A time: Unix seconds (tests give their own), or the database's clock in a statement.
Time = float | sa.ColumnElement[float]


@compiles(DatabaseClock, "postgresql")
def _postgresql(element: DatabaseClock, compiler: Any, **kw: Any) -> str:
    return "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"


@compiles(DatabaseClock, "sqlite")
def _sqlite(element: DatabaseClock, compiler: Any, **kw: Any) -> str:
    return "((julianday('now') - 2440587.5) * 86400.0)"
