"""What the batch tests share: the model, a patients table in PostgreSQL, a service
config, and the `modelport` command run as a subprocess."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from modelport import Registry, Settings
from modelport.pipeline import Frame, MemoryWriter
from small_models import cancer
from waiting import wait_for as wait_for  # the jobs tests import it from here

HERE = Path(__file__).parent


def features(n: int) -> np.ndarray:
    """n rows of breast-cancer features: the data set repeated, slightly perturbed."""
    X, _ = cancer()
    base = X.to_numpy()
    rng = np.random.default_rng(0)
    rows = base[np.arange(n) % len(base)]
    return rows * (1 + 0.01 * rng.standard_normal(rows.shape))


def register(home: Path) -> None:
    X, clf = cancer()
    with Registry(settings=Settings(home=home)) as reg:
        mv = reg.register("cancer", clf, sample_input=X[:5])
        reg.set_alias("cancer", "production", mv.version)


def quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def make_patients(url: str, n: int, table: str = "patients", *, start: int = 1) -> np.ndarray:
    """Create `table` (id + 30 features) with ids start..start+n-1, by COPY; returns X."""
    X, _ = cancer()
    data = features(n)
    cols = ", ".join(f"{quoted(c)} DOUBLE PRECISION" for c in X.columns)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {table} (id BIGINT PRIMARY KEY, {cols})"))
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        with cur.copy(f"COPY {table} FROM STDIN") as copy:  # type: ignore[attr-defined]
            for lo in range(0, n, 50_000):
                part = data[lo:lo + 50_000]
                buf = io.StringIO()
                ids = np.arange(start + lo, start + lo + len(part))
                np.savetxt(buf, np.column_stack([ids, part]), delimiter="\t",
                           fmt=["%d"] + ["%.17g"] * part.shape[1])
                copy.write(buf.getvalue())
        raw.commit()
    finally:
        raw.close()
    engine.dispose()
    return data


def make_results(url: str, table: str = "results") -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {table} (id BIGINT PRIMARY KEY, "
                             "predictions BIGINT NOT NULL)"))
    engine.dispose()


def query(url: str, sql: str) -> list[Any]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql)))
    finally:
        engine.dispose()


def write_config(path: Path, url: str, *, pre: str | None = None, chunk_size: int = 1000,
                 schedule: str | None = None, keys: str | None = None) -> Path:
    lines = [
        "pipelines:",
        "  - name: score",
        "    model: cancer@production",
        "    retriever: {type: sql, url: '${DB}', table: patients}",
        "    writer: {type: sql, url: '${DB}', table: results}",
        "    outputs: [predictions]",
        f"    chunk_size: {chunk_size}",
    ]
    if pre:
        lines.append(f"    pre: {pre}")
    if schedule:
        lines.append(f"    schedule: '{schedule}'")
    if keys:
        lines.append(f'    keys: "{keys}"')
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Result:
    code: int
    out: str
    err: str


def env(home: Path, url: str, **extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    # the job imports batch_helpers (this folder), which imports small_models (tests/)
    e.update({"MODELPORT_HOME": str(home), "DB": url, "COLUMNS": "200",
              "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)]), **extra})
    return e


def modelport(home: Path, url: str, *args: str, timeout: float = 120, **extra: str) -> Result:
    proc = subprocess.run([sys.executable, "-m", "modelport", *args], env=env(home, url, **extra),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def start(home: Path, url: str, *args: str, **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "modelport", *args],
                            env=env(home, url, **extra), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def slow(frame: Any) -> Any:
    """A `pre` step that takes its time, so a test can kill a job part-way."""
    time.sleep(0.05)
    return frame


class CrashingWriter(MemoryWriter):
    """Writes, then dies on the `crash_on`-th write (before that chunk's checkpoint)."""

    def __init__(self, crash_on: int) -> None:
        super().__init__()
        self.crash_on = crash_on

    async def write(self, frame: Frame) -> None:
        await super().write(frame)
        if self.writes == self.crash_on:
            raise RuntimeError("killed")
