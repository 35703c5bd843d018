"""Getting a system ready to serve: data, tables, histories, a model, the top-k.

Each step does its work only when it is missing, so `music up` a second time starts
in seconds: data is generated once (Parquet under `<home>/music/data`), tables are
filled once, a model is trained and gated when there is no production version (or on
`--retrain`), and the nightly batch runs when its table is empty.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
from modelport import NotFound, Registry

from music.als import AlsParams
from music.data import Config, Dataset, generate
from music.gate import Decision, publish
from music.interactions import normalize
from music.store import Store, histories_from, listens_frame
from music.system import ALIAS, MODEL, TOP_K, System
from music.train import TrainConfig, train

Say = Callable[[str], None]

PARAMS = AlsParams(factors=64, regularization=0.1, alpha=10.0, iterations=15)
"""ALS parameters `music up` trains with; `music train` (no parameters) tunes them."""


@dataclass
class Data:
    catalog: pd.DataFrame
    users: pd.DataFrame
    listens: pd.DataFrame


def data_paths(system: System) -> dict[str, Path]:
    folder = system.data_dir / "data"
    return {name: folder / f"{name}.parquet" for name in ("catalog", "users", "listens")}


def ensure_data(system: System, config: Config | None = None, say: Say = print) -> Data:
    paths = data_paths(system)
    if all(p.is_file() for p in paths.values()):
        say(f"data: {paths['listens'].parent} (already there)")
    else:
        started = time.perf_counter()
        dataset: Dataset = generate(config or Config())
        dataset.write(paths["listens"].parent)
        say(f"data: generated {len(dataset.listens):,} listens by {len(dataset.users):,} "
            f"users of {len(dataset.catalog):,} tracks in {time.perf_counter() - started:.1f}s")
    return Data(*(pd.read_parquet(paths[n]) for n in ("catalog", "users", "listens")))


def ensure_tables(system: System, data: Data, say: Say = print) -> None:
    """Tables created and filled; histories built from the listens (SQL or Redis)."""
    store = Store(system)
    try:
        store.create()
        if store.count("catalog"):
            say(f"tables: {system.database_display} (already filled)")
            return
        started = time.perf_counter()
        store.load(data.catalog, data.users, data.listens)
        histories = histories_from(listens_frame(data.listens))
        if system.redis_url:
            write_redis_histories(system, histories)
        else:
            store.write_histories(histories)
        say(f"tables: loaded {len(data.listens):,} listens and {len(histories):,} histories "
            f"into {system.database_display} in {time.perf_counter() - started:.1f}s")
    finally:
        store.close()


def write_redis_histories(system: System, histories: dict[str, list[list[Any]]]) -> None:
    import redis

    assert system.redis_url is not None
    client = redis.Redis.from_url(system.redis_url)
    try:
        pipe = client.pipeline(transaction=False)
        for i, (user, entries) in enumerate(histories.items(), 1):
            pipe.set(f"{system.prefix}history:{user}", orjson.dumps({"history": entries}))
            if i % 1000 == 0:
                pipe.execute()
        pipe.execute()
    finally:
        client.close()


def ensure_model(system: System, data: Data, *, retrain: bool = False,
                 params: AlsParams | None = PARAMS, say: Say = print) -> Decision | None:
    """Train, register and gate a model unless production has one (or `retrain`)."""
    with Registry(settings=system.settings()) as registry:
        try:
            current = registry.get_alias(MODEL, ALIAS)
        except NotFound:
            current = None
        if current is not None and not retrain:
            say(f"model: {MODEL}@{ALIAS} is version {current} (already trained)")
            return None
        decision = train_and_gate(registry, data, params=params, say=say)
    return decision


def train_and_gate(registry: Registry, data: Data, *, params: AlsParams | None = PARAMS,
                   say: Say = print) -> Decision:
    """One training run through `music.train` and the gate of `music.gate`."""
    frame = normalize(pd.DataFrame({"user": data.listens["user"], "item": data.listens["item"],
                                    "ts": data.listens["ts"]}), source="listens")
    config = TrainConfig(name=MODEL, dataset="generated listens", params=params,
                         max_eval_users=2000)
    started = time.perf_counter()
    result = train(frame, config, catalog=data.catalog["item"].astype(str).tolist(),
                   genres=dict(zip(data.catalog["item"].astype(str),
                                   data.catalog["genre"].astype(str), strict=True)))
    decision = publish(registry, result, config)
    if decision.verdict == "undecided" and decision.previous is None:
        # A small demo data set gives too few evaluation users for the gate to decide,
        # and with no production version the service would have nothing to serve:
        # promote it anyway, saying so in the alias history
        reason = f"bootstrap: no production version; the gate {decision.reason}"
        registry.set_alias(MODEL, ALIAS, decision.version, reason=reason)
        decision.promoted, decision.reason = True, reason
    m = result.als.metrics
    taste = (f", {m['genre_share@10']:.0%} of a top 10 in the listener's favourite genre "
             f"({m['genre_catalog_share']:.0%} of the catalogue)" if "genre_share@10" in m
             else "")
    say(f"model: trained {MODEL}:{decision.version} in {time.perf_counter() - started:.1f}s, "
        f"recall@10 {m['recall@10']:.4f} (popularity "
        f"{result.baseline.metrics['recall@10']:.4f}){taste}; "
        f"{'promoted' if decision.promoted else 'not promoted'}: {decision.reason}")
    return decision


async def ensure_topk(system: System, say: Say = print) -> None:
    """Run the nightly batch now if it never ran (the fallback needs its lists)."""
    from music.nightly import run_nightly
    from music.recommender import POPULAR

    topk = system.topk_retriever()
    await topk.start()
    try:
        done = len(await topk.get([POPULAR])) > 0
    finally:
        await topk.close()
    if done:
        say("nightly batch: top-k already computed")
        return
    started = time.perf_counter()
    result = await run_nightly(system)
    say(f"nightly batch: top-{TOP_K} for {result.written:,} users in "
        f"{time.perf_counter() - started:.1f}s")
