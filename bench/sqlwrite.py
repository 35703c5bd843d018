"""SQL writer benchmark: rows/s of `SqlWriter.write` on PostgreSQL, by kind of frame.

    .venv/bin/python bench/sqlwrite.py [--url postgresql://…] [--reps 5]

Each repetition writes into a fresh table the writer creates, then, in turn:

- stream: frames of 256 new keys, four written at once (a stream worker's writes);
- batch: frames of 10,000 new keys, one after another (a batch job's chunks);
- rescore: the batch's keys again (every frame an upsert);
- small: frames of 16 rows (one statement each);
- nan: frames of 2,000 rows with a NaN (stored as NULL: no binary COPY).

Prints, for each, the median rows/s and the client's CPU µs per row, as JSON. To
compare two trees, run it with each on PYTHONPATH in turn, alternating.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

import numpy as np
from sqlalchemy import create_engine, text

from modelport.pipeline.base import Frame
from modelport.pipeline.sqlwrite import SqlWriter

CASES = ["stream", "batch", "rescore", "small", "nan"]


def frame(start: int, n: int, nan: bool = False) -> Frame:
    p = np.random.default_rng(abs(start)).random(n)
    if nan:
        p[0] = np.nan
    return Frame(list(range(start, start + n)), {
        "predictions": (p > 0.5).astype(np.int64),
        "probabilities": np.stack([1 - p, p], axis=1)})


async def timed(rows: int, run: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    """Rows/s, and the CPU time this process spent per row in µs (threads included):
    the second depends less on what else the machine runs."""
    began, cpu = time.perf_counter(), time.process_time()
    await run()
    return rows / (time.perf_counter() - began), \
        (time.process_time() - cpu) / rows * 1e6


async def once(url: str, cases: list[str]) -> dict[str, tuple[float, float]]:
    table = f"bench_write_{uuid.uuid4().hex[:8]}"
    writer = SqlWriter(url, table, create=True)
    await writer.start()
    await writer.write(frame(-1_000, 1_000))  # creates the table, learns its types
    out: dict[str, tuple[float, float]] = {}
    try:
        async def stream() -> None:
            for start in range(0, 100_000, 4 * 256):
                await asyncio.gather(*(writer.write(frame(start + i * 256, 256))
                                       for i in range(4)))

        async def batch(start: int) -> None:
            for s in range(start, start + 200_000, 10_000):
                await writer.write(frame(s, 10_000))

        async def small() -> None:
            for s in range(400_000, 400_000 + 4_000, 16):
                await writer.write(frame(s, 16))

        async def nan() -> None:
            for s in range(500_000, 500_000 + 40_000, 2_000):
                await writer.write(frame(s, 2_000, nan=True))

        runs: dict[str, tuple[int, Callable[[], Awaitable[None]]]] = {
            "stream": (100_352, stream),
            "batch": (200_000, lambda: batch(200_000)),
            "rescore": (200_000, lambda: batch(200_000)),  # the batch's keys again
            "small": (4_000, small),
            "nan": (40_000, nan)}
        for case, (rows, run) in runs.items():
            if case in cases:
                out[case] = await timed(rows, run)
    finally:
        await writer.close()
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--cases", default=",".join(CASES),
                        help="which to run, comma-separated (rescore needs batch)")
    args = parser.parse_args()
    runs = [asyncio.run(once(args.url, args.cases.split(","))) for _ in range(args.reps)]
    print(json.dumps({k: [round(statistics.median(r[k][0] for r in runs)),
                          round(statistics.median(r[k][1] for r in runs), 2)]
                      for k in runs[0]}))


if __name__ == "__main__":
    main()
