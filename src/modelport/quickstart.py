"""`modelport quickstart`: the whole loop on a real model, in a few seconds.

Trains a scikit-learn pipeline (StandardScaler + LogisticRegression) on the breast
cancer data set that ships with scikit-learn, registers it with its test AUC, its
parameters and its training data as the drift reference, promotes it to `production`,
loads `breast-cancer@production` back from the registry and predicts a few held-out
rows. Every run registers a new version and moves `production` to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from modelport.registry import ModelVersion, Registry

NAME = "breast-cancer"
ALIAS = "production"
PARAMS: dict[str, Any] = {"C": 1.0, "max_iter": 1000, "test_size": 0.25, "random_state": 0}
SHOW_ROWS = 5


@dataclass
class Trained:
    model: Any
    x_train: Any
    x_test: Any
    y_test: Any
    target_names: list[str]
    metrics: dict[str, float]


def train() -> Trained:
    """Fit the pipeline and score it on a held-out quarter of the data."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, roc_auc_score
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_breast_cancer(as_frame=True)
    x_train, x_test, y_train, y_test = train_test_split(
        data.data, data.target, test_size=PARAMS["test_size"],
        random_state=PARAMS["random_state"], stratify=data.target,
    )
    model = make_pipeline(
        StandardScaler(), LogisticRegression(C=PARAMS["C"], max_iter=PARAMS["max_iter"])
    )
    model.fit(x_train, y_train)
    metrics = {
        "auc": float(roc_auc_score(y_test, model.predict_proba(x_test)[:, 1])),
        "accuracy": float(accuracy_score(y_test, model.predict(x_test))),
    }
    return Trained(model, x_train, x_test, y_test, list(data.target_names), metrics)


def register(reg: Registry, trained: Trained) -> tuple[ModelVersion, int | None]:
    """Register the trained pipeline and promote it; returns it and the version before."""
    mv = reg.register(
        NAME,
        trained.model,
        sample_input=trained.x_train.head(SHOW_ROWS),
        metrics=trained.metrics,
        params=PARAMS,
        tags={"dataset": "sklearn.datasets.load_breast_cancer", "source": "modelport quickstart"},
        reference_data=trained.x_train,
        description="Is a breast mass malignant or benign? (scikit-learn quickstart)",
    )
    before = reg.set_alias(NAME, ALIAS, mv.version, reason="modelport quickstart")
    return mv, before


def run(reg: Registry, console: Console, *, command: str = "modelport") -> ModelVersion:
    """Train, register, promote, load from the registry and predict; print each step.

    `command` is how the user runs modelport, for the hints printed at the end.
    """
    with console.status("Training StandardScaler + LogisticRegression on breast cancer…"):
        trained = train()
    console.print(f"Trained: test AUC [bold]{trained.metrics['auc']:.3f}[/], "
                  f"accuracy {trained.metrics['accuracy']:.3f} "
                  f"({len(trained.x_train)} training rows, {len(trained.x_test)} test rows)",
                  highlight=False)
    mv, before = register(reg, trained)
    console.print(f"Registered [bold]{NAME}:{mv.version}[/] and moved "
                  f"[green]{NAME}@{ALIAS}[/]: {before or 'none'} → {mv.version}",
                  highlight=False)

    model = reg.load(f"{NAME}@{ALIAS}")
    rows = trained.x_test.head(SHOW_ROWS)
    labels = model.predict(rows)
    proba = model.predict(rows, output="probabilities")
    names = trained.target_names
    table = Table("test row", "predicted", f"P({names[1]})", "truth", "",
                  title=f"{NAME}@{ALIAS} (v{model.version}) on test rows")
    for index, label, p, truth in zip(rows.index, labels, proba, trained.y_test.head(SHOW_ROWS),
                                      strict=True):
        ok = "[green]✓[/]" if int(label) == int(truth) else "[red]✗[/]"
        table.add_row(str(index), names[int(label)], f"{p[1]:.3f}", names[int(truth)], ok)
    console.print(table)
    console.print("Next, try:\n"
                  f"  [bold]{command} models list[/]\n"
                  f"  [bold]{command} models show {NAME}@{ALIAS}[/]\n"
                  f"  [bold]{command} models history {NAME}[/]", highlight=False)
    return mv


__all__ = ["run", "train"]
