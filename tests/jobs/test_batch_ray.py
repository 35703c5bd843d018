"""`modelport batch --engine ray` on a local Ray cluster (loopback, two CPUs) and a real
PostgreSQL: the whole job, and kills of the driver and of a scoring actor, after which
every key has exactly one right row."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from batch_helpers import (
    HERE,
    cancer,
    features,
    make_patients,
    make_results,
    modelport,
    query,
    register,
    start,
    wait_for,
    write_config,
)

# the deadlines are generous: Ray's processes start slowly on a busy two-core machine
pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.timeout(1200)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
"""Ray binds a node to the host's network address even when told 127.0.0.1, except
where it assumes a laptop (this switch): then everything stays on loopback. No token
auth (a token file left in ~/.ray would turn it on for the head, not the drivers)."""


@dataclass
class Cluster:
    address: str
    pid: int


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """`ray start --head` on loopback, two CPUs, no dashboard, in its own temp folder
    and process group (stopped whole at the end, touching no other Ray on the host)."""
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="mpray", dir="/tmp")  # short: Ray's socket paths
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELPORT_", "RAY_"))}
    # Ray runs its workers at nice 15; on a busy two-core machine they would starve
    env.update(LOOPBACK, RAY_worker_niceness="0")
    # the workers import batch_helpers' slow step (this folder) and small_models (tests/)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parent)])
    ray = Path(sys.executable).parent / "ray"
    proc = subprocess.Popen(
        [str(ray), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=false", "--node-ip-address=127.0.0.1", f"--temp-dir={temp}",
         "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL, start_new_session=True)

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_for(lambda: listening() or proc.poll() is not None, 120, "the Ray head")
        assert proc.poll() is None, "ray start --head exited"
        # the GCS listens before the node is up (or has failed): one task says it is
        probe = (f"import ray; ray.init(address='127.0.0.1:{port}'); "
                 "assert ray.get(ray.remote(lambda: 1).remote()) == 1")
        subprocess.run([sys.executable, "-c", probe], env=env, check=True, timeout=600,
                       stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        yield Cluster(f"127.0.0.1:{port}", proc.pid)
    finally:
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(wait)
                break
            except (subprocess.TimeoutExpired, ProcessLookupError):
                continue
        for pid in _descendants(proc.pid):  # a worker that left the group
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    register(home)
    return home


def _config(path: Path, *, block_size: int, chunk_size: int, pre: str | None = None) -> Path:
    """The batch tests' pipeline, on Ray."""
    write_config(path, "${DB}", pre=pre, chunk_size=chunk_size)
    with path.open("a") as out:
        out.write("    engine: ray\n"
                  f"    ray: {{actors: 2, block_size: {block_size}, cpus_per_actor: 0.5}}\n")
    return path


def predictions(url: str) -> dict[int, int]:
    return dict(query(url, "SELECT id, predictions FROM results"))  # type: ignore[arg-type]


def expected(data: np.ndarray) -> dict[int, int]:
    X, clf = cancer()
    preds = clf.predict(pd.DataFrame(data, columns=X.columns))
    return {1 + i: int(p) for i, p in enumerate(preds)}


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _descendants(root: int) -> list[int]:
    tree, found, todo = _children(), [], [root]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _scorers(cluster: Cluster) -> list[int]:
    """The processes of this cluster running a scoring actor (Ray names them so)."""
    pids = []
    for pid in _descendants(cluster.pid):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"_Scorer" in title:
            pids.append(pid)
    return pids


def test_ray_job_scores_every_key_once_with_rejects(
        cluster: Cluster, home: Path, tmp_path: Path, pg_url: str) -> None:
    data = make_patients(pg_url, 3000)
    make_results(pg_url)
    config = _config(tmp_path / "modelport.yaml", block_size=700, chunk_size=400)
    # keys 3001-3005 are not in the table: set aside, as the local job does
    r = modelport(home, pg_url, "batch", "score", "-c", str(config), "--ray-address",
                  cluster.address, "--keys", "SELECT id FROM patients UNION ALL "
                  "SELECT generate_series(3001, 3005)", timeout=600, **LOOPBACK)
    assert r.code == 3, r.err
    assert "read                    3,005 rows" in r.out, r.out
    assert "written                 3,000 rows" in r.out
    assert "rejected                    5 rows → table results_rejects" in r.out
    assert predictions(pg_url) == expected(data)
    assert query(pg_url, "SELECT key, reason FROM results_rejects ORDER BY key") == [
        (str(k), f"no data for key {k}") for k in range(3001, 3006)]
    [cp] = query(pg_url, "SELECT status, chunks, rows_read, rows_written, rows_rejected "
                         "FROM mp_batch_checkpoints")
    assert tuple(cp) == ("done", 5, 3005, 3000, 5)  # 700-key blocks: 5 of them
    assert query(pg_url, "SELECT count(*), bool_and(done) FROM mp_batch_blocks") == [(5, True)]


def test_ray_job_scores_a_file_in_row_ranges_with_its_rejects(
        cluster: Cluster, home: Path, tmp_path: Path, pg_url: str) -> None:
    X, _ = cancer()
    data = features(1500)
    frame = pd.DataFrame(data, columns=X.columns)
    frame.insert(0, "id", np.arange(1, 1501))
    frame.loc[10, "mean texture"] = np.nan  # key 11: set aside with its reason
    frame.to_csv(tmp_path / "rows.csv", index=False)
    make_patients(pg_url, 1)  # the pipeline's retriever's table (rows come from the file)
    make_results(pg_url)
    config = _config(tmp_path / "modelport.yaml", block_size=400, chunk_size=200)
    r = modelport(home, pg_url, "batch", "score", "-c", str(config), "--ray-address",
                  cluster.address, "--input", str(tmp_path / "rows.csv"), timeout=600,
                  **LOOPBACK)
    assert r.code == 3, r.err
    want = expected(data)
    del want[11]
    assert predictions(pg_url) == want
    [(key, reason)] = query(pg_url, "SELECT key, reason FROM results_rejects")
    assert key == "11" and "mean texture" in reason
    [cp] = query(pg_url, "SELECT status, chunks, rows_read, rows_written, rows_rejected "
                         "FROM mp_batch_checkpoints")
    assert tuple(cp) == ("done", 4, 1500, 1499, 1)  # 400-row blocks: 4 of them
    assert query(pg_url, "SELECT count(*), bool_and(done) FROM mp_batch_blocks") == [(4, True)]


def test_ray_job_killed_driver_then_actor_ends_with_one_row_per_key(
        cluster: Cluster, home: Path, tmp_path: Path, pg_url: str) -> None:
    n = 12_000
    data = make_patients(pg_url, n)
    make_results(pg_url)
    # 24 blocks of 500 keys in 250-key batches, each batch slowed down (a 50 ms pre step)
    config = _config(tmp_path / "modelport.yaml", block_size=500, chunk_size=250,
                     pre="batch_helpers:slow")
    args = ("batch", "score", "-c", str(config), "--ray-address",
            cluster.address, "--keys", "SELECT id FROM patients")

    def blocks_done() -> int:
        try:
            return int(query(pg_url, "SELECT count(*) FROM mp_batch_blocks WHERE done")[0][0])
        except Exception:  # the table is created by the job
            return 0

    # 1. SIGKILL of the driver, with some blocks committed
    proc = start(home, pg_url, *args, **LOOPBACK)
    try:
        wait_for(lambda: blocks_done() >= 4 or proc.poll() is not None, 600, "4 blocks done")
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    first = blocks_done()
    assert 4 <= first < 24
    # the cluster ends the dead driver's job: its actors go
    wait_for(lambda: not _scorers(cluster), 120, "the killed job's actors to end")
    [(read, status)] = query(pg_url, "SELECT rows_read, status FROM mp_batch_checkpoints")
    assert (read, status) == (first * 500, "running")

    # 2. the same command resumes; SIGKILL of a scoring actor part-way: Ray restarts it
    # and redoes its batch
    proc = start(home, pg_url, *args, **LOOPBACK)
    try:
        wait_for(lambda: blocks_done() >= first + 3 or proc.poll() is not None, 600,
                 "3 more blocks done")
        actors = _scorers(cluster)
        assert actors and proc.poll() is None, proc.communicate()
        os.kill(actors[0], signal.SIGKILL)
        at_kill = blocks_done()
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert f"(resumed after {first * 500:,})" in out, out
    assert at_kill < 24  # blocks were left for the restarted actor and the other one
    assert predictions(pg_url) == expected(data)  # every key, once, right
    assert query(pg_url, "SELECT count(*) FROM results") == [(n,)]
    [cp] = query(pg_url, "SELECT status, rows_read, rows_written, chunks "
                         "FROM mp_batch_checkpoints")
    assert tuple(cp) == ("done", n, n, 24)


def test_ray_job_writes_the_shadows_answers_to_the_side_table(
        cluster: Cluster, home: Path, tmp_path: Path, pg_url: str) -> None:
    """The actors score through the same pipeline: its shadow_writer gets every row."""
    from sklearn.tree import DecisionTreeClassifier

    from modelport import Registry, Settings

    data = make_patients(pg_url, 1500)
    make_results(pg_url)
    X, clf = cancer()
    shadow = DecisionTreeClassifier(max_depth=1, random_state=0).fit(X, clf.predict(X))
    with Registry(settings=Settings(home=home)) as reg:
        reg.set_alias("cancer", "staging",
                      reg.register("cancer", shadow, sample_input=X[:5]).version)
    config = _config(tmp_path / "modelport.yaml", block_size=700, chunk_size=400)
    config.write_text(
        "models: [{ref: cancer@production, shadow: cancer@staging}]\n"
        + config.read_text().replace(
            "    outputs:", "    shadow_writer: {type: sql, url: '${DB}', table: side, "
                           "create: true}\n    outputs:"))
    r = modelport(home, pg_url, "batch", "score", "-c", str(config), "--ray-address",
                  cluster.address, "--keys", "SELECT id FROM patients", timeout=600,
                  **LOOPBACK)
    assert r.code == 0, r.err
    assert predictions(pg_url) == expected(data)
    preds = shadow.predict(pd.DataFrame(data, columns=X.columns))
    want = {1 + i: int(p) for i, p in enumerate(preds)}
    assert want != expected(data)
    assert dict(query(pg_url, "SELECT id, predictions FROM side")) == want  # type: ignore[arg-type]
