"""Binary COPY on the event loop: the SQL writer's common write on PostgreSQL, without
a thread.

A stream worker or a batch job writes frames of new keys, already encoded for binary
COPY (`pgcopy.encode`). Through SQLAlchemy's engine that is a thread per frame, and the
thread and the event loop hand the GIL to each other at every step of the driver: on a
worker whose CPU is the limit, that costs more than the COPY. psycopg's asyncio
connection does the same COPY on the loop, waiting on the socket as the loop waits on
the broker's. Everything else (creating the table, upserts after a conflict, other
databases, small frames) stays on the engine.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy.engine import URL

from modelport.pipeline.sqlconn import CONNECT_TIMEOUT_S


class AsyncCopier:
    """Up to `size` asyncio connections to the database at `url` (kept between frames),
    each COPY a transaction of its own. Raises psycopg's errors as they come; a
    connection that fails is closed, not kept."""

    def __init__(self, url: URL, size: int) -> None:
        query = dict(url.query)
        query.setdefault("connect_timeout", str(CONNECT_TIMEOUT_S))
        self.conninfo = url.set(drivername="postgresql", query=query) \
            .render_as_string(hide_password=False)
        self.size = size
        self._idle: list[Any] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    async def copy(self, statement: str, data: bytes) -> None:
        """`data` (binary COPY, header to trailer) into the table `statement` names."""
        import psycopg

        conn = await self._acquire()
        try:
            # in autocommit, COPY is a transaction of its own: no BEGIN and COMMIT to
            # wait for, and a refused row leaves nothing written
            async with conn.cursor() as cursor, cursor.copy(statement) as copy:
                await copy.write(data)
        except psycopg.Error:
            # rolled back; a refused row (a key already there) leaves it usable
            self._release(conn)
            raise
        except BaseException:  # cancelled mid-COPY: in a state nobody knows
            conn.pgconn.finish()
            raise
        self._release(conn)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await _close(conn)

    async def _acquire(self) -> Any:
        import psycopg

        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # connections belong to the loop that made them
            for conn in self._idle:
                conn.pgconn.finish()
            self._idle, self._loop = [], loop
        if self._idle:
            return self._idle.pop()
        return await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)

    def _release(self, conn: Any) -> None:
        from psycopg.pq import TransactionStatus

        usable = not conn.closed and not conn.broken \
            and conn.info.transaction_status == TransactionStatus.IDLE
        if usable and len(self._idle) < self.size:
            self._idle.append(conn)
        else:
            conn.pgconn.finish()


async def _close(conn: Any) -> None:
    try:
        await conn.close()
    except Exception:  # already broken: nothing left to close politely
        conn.pgconn.finish()
