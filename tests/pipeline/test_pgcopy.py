"""Binary COPY to and from numpy columns, against the real PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg
import pytest

from modelport.pipeline import pgcopy

pytestmark = pytest.mark.postgres

COLUMNS = ("id BIGINT, flag BOOLEAN, small SMALLINT, mid INTEGER, single REAL, "
           "double DOUBLE PRECISION")


@pytest.fixture
def conn(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://")) as c:
        yield c


@pytest.fixture
def table(conn: psycopg.Connection[Any]) -> str:
    name = f"copy_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE TABLE {name} ({COLUMNS}, probs DOUBLE PRECISION[])")
    return name


def columns(n: int) -> list[np.ndarray]:
    i = np.arange(n)
    return [i + 1, i % 2 == 0, (i - 3).astype(np.int16), i * 1000, i / 4, i / 3,
            np.stack([i / n, 1 - i / n], axis=1)]


def write(conn: psycopg.Connection[Any], table: str, values: list[np.ndarray]) -> None:
    oids = [oid for _, oid in pgcopy.describe(conn.cursor(), f"SELECT * FROM {table}")]
    data = pgcopy.encode(values, oids)
    assert data is not None
    with conn.cursor() as cur, cur.copy(f"COPY {table} FROM STDIN (FORMAT BINARY)") as copy:
        copy.write(data)


def read(conn: psycopg.Connection[Any], query: str, chunk: int) -> list[list[np.ndarray]]:
    with conn.cursor() as cur:
        oids = [oid for _, oid in pgcopy.describe(cur, query)]
        return list(pgcopy.copy_out(cur, query, oids, chunk))


def test_numbers_and_arrays_round_trip_in_chunks(conn, table) -> None:
    values = columns(10)
    write(conn, table, values)
    stored = conn.execute(f"SELECT small, probs FROM {table} WHERE id = 10").fetchone()
    assert stored == (6, [0.9, pytest.approx(0.1)])  # PostgreSQL reads what numpy wrote
    chunks = read(conn, f"SELECT id, flag, small, mid, single, double FROM {table} "
                        "ORDER BY id", 4)
    assert [len(c[0]) for c in chunks] == [4, 4, 2]
    got = [np.concatenate(parts) for parts in zip(*chunks, strict=True)]
    for have, want in zip(got, values[:6], strict=True):
        np.testing.assert_allclose(have, want.astype(have.dtype), rtol=1e-6)
    # as a cursor would have typed them: int64, bool, float64
    assert [a.dtype.kind for a in got] == ["i", "b", "i", "i", "f", "f"]
    assert got[0].dtype == np.int64 and got[4].dtype == np.float64


def test_nulls_are_read_row_by_row_as_missing_values(conn, table) -> None:
    write(conn, table, columns(6))
    conn.execute(f"UPDATE {table} SET mid = NULL, double = NULL, flag = NULL WHERE id = 3")
    (ids, flag, mid, double), = read(conn, f"SELECT id, flag, mid, double FROM {table} "
                                          "ORDER BY id", 100)
    assert ids.tolist() == [1, 2, 3, 4, 5, 6]
    assert mid.dtype == np.float64 and np.isnan(mid[2]) and mid[3] == 3000
    assert np.isnan(double[2]) and double[1] == pytest.approx(1 / 3)
    assert flag.tolist() == [True, False, None, False, True, False]


def test_an_empty_result_has_no_chunks(conn, table) -> None:
    assert read(conn, f"SELECT id, double FROM {table}", 10) == []


def test_what_does_not_fit_is_left_to_the_general_path() -> None:
    i = np.arange(3)
    assert pgcopy.encode([i, np.array([0.5, np.nan, 1.0])], [20, 701]) is None  # NaN: NULL
    assert pgcopy.encode([i, np.array([1, 70_000, 3])], [20, 21]) is None  # past int2
    assert pgcopy.encode([i, np.array(["a", 2, "c"], dtype=object)], [20, 25]) is None
    assert pgcopy.encode([i, np.array([1.5, 2.5, 3.5])], [20, 25]) is None  # number → text
    assert pgcopy.encode([i, np.array([1.5, 2.5, 3.5])], [20, 20]) is None  # float → bigint
    assert pgcopy.encode([i, np.zeros((3, 0))], [20, 1022]) is None  # empty arrays
    assert pgcopy.encode([i, np.array([1, 2, 3])], [20, 701]) is not None  # int → double
    assert not pgcopy.readable([20, 25]) and pgcopy.readable([20, 16, 701])


def test_exact_columns_keep_integers_and_null(conn, table) -> None:
    write(conn, table, columns(3))
    conn.execute(f"UPDATE {table} SET mid = NULL WHERE id = 2")
    with conn.cursor() as cur:
        query = f"SELECT mid, id FROM {table} ORDER BY id"
        oids = [oid for _, oid in pgcopy.describe(cur, query)]
        ((mid, ids),) = pgcopy.copy_out(cur, query, oids, 10, exact=[0])
    assert mid.tolist() == [0, None, 2000] and ids.dtype == np.int64


def test_text_keys_and_json_text_round_trip_with_nulls_and_unicode(conn) -> None:
    name = f"copy_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE TABLE {name} (id VARCHAR(255), score BIGINT, label TEXT, "
                 "probs TEXT, doc JSONB, raw JSON)")
    keys = np.array(["m1", "clé-2", "m3"], dtype=object)  # rows of different sizes
    labels = np.array(["a", None, "ünïcode ✓"], dtype=object)
    probs = np.array([[0.25, 0.75], [np.nan, 1.0], [1.0, 0.0]])
    docs = np.array(['{"a": 1}', '{"b": [2]}', None], dtype=object)
    raws = np.array(['[1]', '{}', '"x"'], dtype=object)
    write(conn, name, [keys, np.array([1, 2, 3]), labels, probs, docs, raws])
    rows = conn.execute(f"SELECT id, score, label, probs, doc, raw FROM {name} "
                        "ORDER BY score").fetchall()
    assert rows == [
        ("m1", 1, "a", "[0.25,0.75]", {"a": 1}, [1]),
        ("clé-2", 2, None, "[null,1.0]", {"b": [2]}, {}),  # NaN is null, as `cells` writes
        ("m3", 3, "ünïcode ✓", "[1.0,0.0]", None, "x"),
    ]


@pytest.mark.parametrize("lengths", [4, 40], ids=["a-few-lengths", "many-lengths"])
@pytest.mark.parametrize("alphabet", ["ab", "aé✓"], ids=["ascii", "unicode"])
def test_rows_with_a_text_field_of_varying_length_round_trip(conn, lengths, alphabet) -> None:
    name = f"copy_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE TABLE {name} (score BIGINT, id VARCHAR(255), "
                 "probs DOUBLE PRECISION[])")
    rng = np.random.default_rng(lengths)
    n = 300
    keys = np.array([f"{i}-" + alphabet[i % len(alphabet)] * int(rng.integers(lengths))
                     for i in range(n)], dtype=object)
    probs = rng.random((n, 2))
    write(conn, name, [np.arange(n), keys, probs])
    rows = conn.execute(f"SELECT score, id, probs FROM {name} ORDER BY score").fetchall()
    assert [(s, k) for s, k, _ in rows] == list(zip(range(n), keys.tolist(), strict=True))
    assert np.array([p for _, _, p in rows]).tolist() == probs.tolist()


def test_a_text_field_with_nulls_among_fixed_ones_round_trips(conn) -> None:
    name = f"copy_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE TABLE {name} (id BIGINT, label TEXT, score DOUBLE PRECISION)")
    labels = np.array([None, "a", "bb", None, "a", "ccc"] * 20, dtype=object)
    n = len(labels)
    write(conn, name, [np.arange(n), labels, np.arange(n) / 7])
    rows = conn.execute(f"SELECT id, label, score FROM {name} ORDER BY id").fetchall()
    assert rows == [(i, labels[i], pytest.approx(i / 7)) for i in range(n)]
