"""Tabular regression: rows of numeric and categorical columns with a numeric target -> a number.

Everything about rows is shared with :class:`~.tabular_classification.TabularClassification`
(the same featurizer learned on the training split, the same request bodies and stored rows);
only the target differs. The candidates predict one value: a linear model, an MLP, and
scikit-learn's HistGradientBoostingRegressor evaluated as torch tensors. The networks learn the
target standardized by the training split's mean and standard deviation, which their artifact
keeps, so they answer in the target's units. Metrics: RMSE, MAE and R²; the gate compares
champion and challenger on paired squared errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data.tabular import prepare_regression_dataset
from ..spec import DataSpec
from .base import Candidate
from .tabular_classification import _TAB, TabularClassification

__all__ = ["TabularRegression", "REGRESSION_METRICS"]

#: the requirement metrics of regression: r2 (higher is better), rmse and mae (errors, in the target's units)
REGRESSION_METRICS = ("r2", "rmse", "mae")


class TabularRegression(TabularClassification):
    name = "tabular-regression"
    problem = "regression"
    val_score = "r2"
    metric_kind = "regression"
    metrics = REGRESSION_METRICS
    default_metric = "r2"
    candidates = {
        "linear": Candidate("linear", "linear", dict(_TAB), about="linear regression on the featurized row"),
        "mlp": Candidate("mlp", "mlp", dict(_TAB), about="one hidden layer on the featurized row"),
        "hgb": Candidate("hgb", "hgb", dict(_TAB),
                         about="histogram gradient-boosted regression trees (scikit-learn), evaluated in torch"),
    }

    def prepare(self, data: DataSpec, base_dir: Path):
        return prepare_regression_dataset(data, base_dir)

    default_data = "builtin:diabetes"

    def _builtins(self) -> tuple[str, ...]:
        from ..data.tabular import REGRESSION_BUILTINS

        return REGRESSION_BUILTINS

    # -- serving ------------------------------------------------------------------------------
    def read_output(self, model, output) -> tuple[str, dict[str, float], dict[str, Any]]:
        """One number: the label the store keeps is the value, 6 significant digits; the answer
        shows ``value`` and that ``label``."""
        value = float(output[0])
        label = f"{value:.6g}"
        return label, {model.class_names[0]: value}, {"value": value, "label": label}

    def check_feedback(self, label, predicted: str, version: str, ctx) -> str:
        """The true value (None confirms ``predicted``), a finite number, kept with 6 significant
        digits; a boolean or anything else that is not a finite number is an InputError."""
        import math

        from ..errors import InputError
        from .serving import json_safe

        target = ctx.registry.manifest(version)["class_names"][0]
        text = predicted if label is None else str(label)
        try:
            number = float(text)
        except ValueError:
            number = float("nan")
        if isinstance(label, bool) or not math.isfinite(number):
            raise InputError(f"field 'label': received {json_safe(label)!r}; expected the true value of "
                             f"{target!r}, a finite number")
        return f"{number:.6g}"
