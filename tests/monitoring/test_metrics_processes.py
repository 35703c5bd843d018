"""Several processes serving one port report their metrics together
(prometheus_client's multiprocess mode, when PROMETHEUS_MULTIPROC_DIR is set)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

COUNT = textwrap.dedent("""
    import sys
    from modelport.monitoring.metrics import Metrics
    from modelport.settings import Settings
    m = Metrics(Settings().prometheus_multiproc_dir)
    m.requests.labels("cancer", "1", "predict", "200").inc(int(sys.argv[1]))
    m.served_version.labels("cancer").set(int(sys.argv[2]))
    m.queue_depth.labels("cancer").set(3)
    sys.stdout.write(m.render().decode())
""")


def run(folder: Path, *args: str) -> str:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    done = subprocess.run([sys.executable, "-c", COUNT, *args], env=env, check=True,
                          capture_output=True, text=True, timeout=60)
    return done.stdout


def value(text: str, series: str) -> float:
    (line,) = [x for x in text.splitlines() if x.startswith(series)]
    return float(line.rsplit(" ", 1)[1])


def test_a_scrape_of_any_process_reports_them_all(tmp_path: Path) -> None:
    run(tmp_path, "5", "3")
    text = run(tmp_path, "2", "4")  # the second process's scrape
    requests = 'modelport_requests_total{model="cancer",route="predict",status="200",' \
               'version="1"}'
    assert value(text, requests) == 7  # both processes' requests
    assert value(text, 'modelport_served_version{model="cancer"}') == 4  # the highest
    assert value(text, 'modelport_queue_depth{model="cancer"}') == 6  # waiting in both


def test_without_the_folder_a_process_reports_its_own(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    done = subprocess.run([sys.executable, "-c", COUNT, "5", "3"], env=env, check=True,
                          capture_output=True, text=True, timeout=60)
    assert 'modelport_requests_total{model="cancer",route="predict",status="200",' \
           'version="1"} 5.0' in done.stdout
