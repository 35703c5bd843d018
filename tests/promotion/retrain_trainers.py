"""Trainers for the retraining tests: each registers a version of `m` with an `auc`."""

from __future__ import annotations

from typing import Any

import numpy as np
from flaky_models import Summer

from modelport.jobs.retrain import RetrainContext

CALLS: list[RetrainContext] = []


def _register(context: RetrainContext, auc: float) -> Any:
    CALLS.append(context)
    return context.registry.register(context.model, Summer(), sample_input=np.ones((2, 3)),
                                     trusted=True, metrics={"auc": auc})


def better(context: RetrainContext) -> Any:
    return _register(context, 0.99)


def worse(context: RetrainContext) -> Any:
    return _register(context, 0.5)


def nothing(context: RetrainContext) -> Any:
    return "done"
