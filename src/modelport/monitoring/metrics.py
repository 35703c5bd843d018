"""Prometheus metrics, on a registry of their own per app (tests build many apps).

Several processes serving one port (`music up --workers N`) each count their own
requests, and a scrape reaches one of them. They report together through
prometheus_client's multiprocess mode: whoever starts them sets
`PROMETHEUS_MULTIPROC_DIR` to an empty folder before they start (prometheus_client
reads it when imported), each process writes its values there, and a scrape of any of
them reads them all (`Settings.prometheus_multiproc_dir` hands the folder to
`Metrics`): counters and histograms summed, gauges as each one says below.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
JOB_BUCKETS = (1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 21600)


class Metrics:
    """Every metric modelport exports; one instance per server. With `multiprocess_dir`
    (the processes' shared `PROMETHEUS_MULTIPROC_DIR`), a scrape reports them all."""

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self.registry = CollectorRegistry()
        self.multiprocess_dir = multiprocess_dir
        r = self.registry
        self.requests = Counter(
            "modelport_requests_total", "HTTP requests by model, version, route and status",
            ["model", "version", "route", "status"], registry=r)
        self.latency = Histogram(
            "modelport_request_seconds", "HTTP request latency by model, version and route",
            ["model", "version", "route"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(
            "modelport_batch_size", "Rows per model call", ["model", "version"],
            buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge(
            "modelport_queue_depth", "Requests waiting for the model", ["model"], registry=r,
            multiprocess_mode="livesum")
        self.rejections = Counter(
            "modelport_rejections_total", "Requests refused, by reason",
            ["model", "reason"], registry=r)
        self.model_loads = Counter(
            "modelport_model_loads_total", "Model version loads by outcome (loaded, failed)",
            ["model", "outcome"], registry=r)
        self.output_row_errors = Counter(
            "modelport_model_output_row_errors_total",
            "Model calls whose answer had another number of rows than the batch",
            ["model", "version"], registry=r)
        self.served_version = Gauge(
            "modelport_served_version", "Version each served model answers with", ["model"],
            registry=r, multiprocess_mode="livemax")

        self.stream_messages = Counter(
            "modelport_stream_messages_total", "Stream messages by pipeline and outcome",
            ["pipeline", "outcome"], registry=r)
        self.stream_batch_seconds = Histogram(
            "modelport_stream_batch_seconds", "Time to score, write and ack one batch",
            ["pipeline"], buckets=LATENCY_BUCKETS, registry=r)
        self.stream_retries = Counter(
            "modelport_stream_retries_total", "Retries through backing-service outages",
            ["pipeline", "step"], registry=r)
        self.stream_redeliveries = Counter(
            "modelport_stream_redeliveries_total", "Messages delivered more than once",
            ["pipeline"], registry=r)
        self.stream_lag = Gauge(
            "modelport_stream_lag", "Messages waiting for the consumer group", ["pipeline"],
            registry=r, multiprocess_mode="livemax")

        self.job_runs = Counter(
            "modelport_job_runs_total",
            "Scheduled job runs by job and outcome (success, failure, skipped)",
            ["job", "outcome"], registry=r)
        self.job_last_success = Gauge(
            "modelport_job_last_success_timestamp_seconds",
            "Unix time the job last finished successfully", ["job"], registry=r,
            multiprocess_mode="max")
        self.job_duration = Histogram(
            "modelport_job_duration_seconds", "Duration of scheduled job runs", ["job"],
            buckets=JOB_BUCKETS, registry=r)
        self.batch_rows = Counter(
            "modelport_batch_rows_total", "Batch job rows by pipeline and outcome "
            "(read, written, rejected)", ["pipeline", "outcome"], registry=r)

        self.predlog_rows = Counter(
            "modelport_predlog_rows_total", "Sampled rows for the prediction log by outcome "
            "(written; dropped: buffer full; failed: the database refused the write)",
            ["outcome"], registry=r)

        # live drift (monitoring/livedrift.py): every replica computes the same values
        # from the shared prediction log, so the processes' max is any one of them
        self.drift_score = Gauge(
            "modelport_drift_score", "Input drift of a served version over the recent "
            "window against its training profile (method psi or js); only from rows "
            "enough to believe it", ["model", "version", "feature", "method"], registry=r,
            multiprocess_mode="livemax")
        self.drift_level = Gauge(
            "modelport_drift_level", "Drift verdict per feature: 0 stable, 1 shift, 2 drift",
            ["model", "version", "feature"], registry=r, multiprocess_mode="livemax")
        self.drift_rows = Gauge(
            "modelport_drift_rows", "Sampled rows the drift was computed from (fewer than "
            "100: no feature is judged)", ["model", "version"], registry=r,
            multiprocess_mode="livemax")
        self.drift_computed = Gauge(
            "modelport_drift_computed_timestamp_seconds",
            "Unix time drift was last computed for the model", ["model"], registry=r,
            multiprocess_mode="livemax")
        self.traffic_answers = Counter(
            "modelport_traffic_answers_total", "Answers of a served model with a traffic "
            "policy, by the version that gave them and its role (primary, canary)",
            ["model", "version", "role"], registry=r)
        self.shadow_calls = Counter(
            "modelport_shadow_calls_total", "Shadow calls by outcome (compared; error; "
            "timeout; dropped: the shadow queue was full; unwritten: a pipeline's "
            "shadow_writer failed)",
            ["model", "shadow", "outcome"], registry=r)
        self.shadow_rows = Counter(
            "modelport_shadow_rows_total", "Rows answered by both primary and shadow",
            ["model", "shadow"], registry=r)
        self.shadow_agreed = Counter(
            "modelport_shadow_agreed_rows_total", "Of those, rows where the shadow agreed "
            "(a ranker's row counts its share of common ids)", ["model", "shadow"], registry=r)
        self.shadow_agreement = Gauge(
            "modelport_shadow_agreement", "Share of compared rows where the shadow agreed, "
            "since this process started (across replicas: agreed_rows / rows)",
            ["model", "shadow"], registry=r, multiprocess_mode="liveall")
        # computed from the database by every replica (monitoring.quality): they agree,
        # so the most recent value of any process is the value
        self.live_quality = Gauge(
            "modelport_live_quality", "Quality of each served version on the predictions "
            "that got feedback (accuracy, auc, mae, rmse, recall@k, ndcg@k)",
            ["model", "version", "metric"], registry=r, multiprocess_mode="mostrecent")
        self.feedback_rows = Gauge(
            "modelport_feedback_joined_rows", "Logged predictions with feedback that the "
            "live quality is computed on", ["model", "version"], registry=r,
            multiprocess_mode="mostrecent")

    def render(self) -> bytes:
        if self.multiprocess_dir:  # every process's values, not only this one's
            from prometheus_client import multiprocess

            everyone = CollectorRegistry()
            multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
                everyone, path=self.multiprocess_dir)
            return generate_latest(everyone)
        return generate_latest(self.registry)
