"""What the serving benchmark runs in its child processes, pinned to the server core.

- `modelport`: `modelport.server.run.serve` on one registered model, as
  `modelport serve` would run it (access log off).
- `fastapi`: the baseline, a hand-written FastAPI endpoint the way people usually
  write one: a pydantic body model, `predict` + `predict_proba` per request, a plain
  `def` route (FastAPI runs it in its thread pool), served by uvicorn.
- `fastapi-minimal`: issue 19's baseline, the minimal endpoint of the peers' harness
  (`../shared/peerbench/servers/fastapi_app.py`): the same pydantic body model, an
  `async def` route (the model on the event loop) calling `predict` alone.
- `noop`: the HTTP limit, a raw ASGI app under uvicorn that reads the body and
  answers a fixed prediction (no framework, no model).
- `raw`: no server at all; times the estimator's `predict` + `predict_proba` (the
  work both servers do per model call) at given batch sizes and prints JSON.

`bench/serving.py` starts these as `serving.py --worker NAME …`; nothing here runs
at import.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from modelport.config import ServiceConfig
from modelport.dataplane import ModelConfig
from modelport.registry import Registry
from modelport.settings import BatchingSettings, ServerSettings, Settings


def dataset(key: str) -> tuple[np.ndarray, np.ndarray]:
    """The benchmark's two data sets: `small` (breast cancer, 30 features), `heavy`
    (digits, 64 features)."""
    from sklearn.datasets import load_breast_cancer, load_digits

    loader = {"small": load_breast_cancer, "heavy": load_digits}[key]
    x, y = loader(return_X_y=True)
    return np.asarray(x, dtype=np.float64), np.asarray(y)


def settings_for(home: Path, *, port: int = 0, batching: bool = True,
                 poll_interval_s: float = 2.0, keys: Path | None = None) -> Settings:
    return Settings(
        home=home,
        server=ServerSettings(port=port, access_log=False, poll_interval_s=poll_interval_s,
                              api_keys_file=keys),
        batching=BatchingSettings(enabled=batching),
    )


def estimator(home: Path, ref: str) -> Any:
    """The sklearn object behind a registered version (what a user would joblib.load)."""
    with Registry(settings=settings_for(home)) as registry:
        flavor: Any = registry.load(ref).flavor  # the sklearn flavor keeps it as .model
        return flavor.model


# --- modelport ----------------------------------------------------------------------


def run_modelport(home: Path, port: int, ref: str, *, batching: bool, poll_interval_s: float,
                  keys: Path | None, on_loop: str = "auto") -> None:
    from modelport.server.run import serve

    settings = settings_for(home, port=port, batching=batching,
                            poll_interval_s=poll_interval_s, keys=keys)
    model = ModelConfig.model_validate({"ref": ref, "on_loop": on_loop})
    serve(settings, ServiceConfig(models=[model]))


# --- the FastAPI baseline -----------------------------------------------------------


class PredictRequest(BaseModel):
    instances: list[list[float]]


def run_fastapi(home: Path, port: int, ref: str, *, minimal: bool = False) -> None:
    import uvicorn
    from fastapi import FastAPI

    model = estimator(home, ref)
    app = FastAPI()

    if minimal:
        @app.post("/predict", response_model=None)
        async def predict_minimal(request: PredictRequest) -> dict[str, Any]:
            x = np.asarray(request.instances, dtype=np.float64)
            return {"predictions": model.predict(x).tolist()}
    else:
        @app.post("/predict", response_model=None)
        def predict(request: PredictRequest) -> dict[str, Any]:
            x = np.asarray(request.instances)
            return {"predictions": model.predict(x).tolist(),
                    "probabilities": model.predict_proba(x).tolist()}

    # the same event loop and HTTP parser modelport's runner picks
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                access_log=False, log_level="warning")


# --- the HTTP limit ----------------------------------------------------------------


def run_noop(port: int) -> None:
    """uvicorn as modelport runs it, with no framework and no model: reads each
    request's body and answers a fixed prediction. What HTTP alone costs on this core."""
    import uvicorn

    answer = b'{"predictions":[0],"probabilities":[[0.5,0.5]]}'
    head = {"type": "http.response.start", "status": 200,
            "headers": [(b"content-type", b"application/json"),
                        (b"content-length", b"%d" % len(answer))]}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        await send(head)
        await send({"type": "http.response.body", "body": answer})

    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                access_log=False, log_level="warning", lifespan="off")


# --- raw in-process predict ---------------------------------------------------------


def time_predict(model: Any, rows: np.ndarray, size: int, seconds: float,
                 proba: bool = True) -> dict[str, float]:
    """Wall and CPU time of `predict` + `predict_proba` (the work both servers do per
    model call; `proba=False`: `predict` alone) on a batch of `size` rows.

    The median of five timed stretches, after a warm-up. CPU time (the process's) is
    what the call costs whatever else the machine runs; wall time is what a caller
    waits on this machine now.
    """
    batch = np.resize(rows, (size, rows.shape[1]))  # repeats rows when size > len(rows)

    def call() -> None:
        model.predict(batch)
        if proba:
            model.predict_proba(batch)

    for _ in range(3):
        call()
    walls: list[float] = []
    cpus: list[float] = []
    for _ in range(5):
        calls, wall0, cpu0 = 0, time.perf_counter(), time.process_time()
        while True:
            call()
            calls += 1
            wall = time.perf_counter() - wall0
            if wall >= seconds / 5 and calls >= 3:
                break
        walls.append(wall / calls)
        cpus.append((time.process_time() - cpu0) / calls)
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    return {"size": size, "ms_per_call": wall * 1000, "rows_per_s": size / wall,
            "cpu_ms_per_call": cpu * 1000, "rows_per_cpu_s": size / cpu}


def run_raw(home: Path, ref: str, rows: np.ndarray) -> None:
    """Answer `SIZE SECONDS [predict]` lines on stdin with a JSON line of `time_predict`.

    A long-lived process, so the benchmark can time raw predict right after each
    server run (at the batch size that run formed) without paying start-up each time.
    """
    model = estimator(home, ref)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        size, seconds, *only = line.split()
        timing = time_predict(model, rows, int(size), float(seconds), proba=not only)
        print(json.dumps(timing), flush=True)
