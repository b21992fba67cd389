"""Tabular data, the ``tabular`` featurizer, the task's request parsing and the torch tree evaluator."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from modelloop.data.dataset import Dataset
from modelloop.data.tabular import load_tabular_builtin, load_tabular_file
from modelloop.errors import DataError, InputError
from modelloop.models import build_model
from modelloop.spec import DataSpec
from modelloop.tasks import featurizer_from_config, get_task
from modelloop.tasks.tabular_features import OTHER, TabularFeaturizer

CSV = """age,plan,score,label
34,basic,0.5,yes
51,premium,,no
,basic,0.7,yes
28,,0.1,no
45,premium,0.9,
39,basic,0.3,yes
60,premium,0.8,no
22,basic,0.2,yes
"""


class _Model:  # what parse_json needs of a loaded model
    def __init__(self, featurizer):
        self.featurizer = featurizer


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "people.csv"
    path.write_text(CSV)
    return load_tabular_file(path)


def test_loader_types_columns_and_drops_rows_without_target(table):
    assert table.numeric == ["age", "score"] and table.categorical == ["plan"]
    assert len(table.rows) == 7 and table.labels.count("yes") == 4
    assert "missing target" in table.dropped[0]["reason"] and "row 5" in table.dropped[0]["file"]
    assert table.rows[1] == {"age": 51.0, "plan": "premium", "score": None}
    assert table.rows[3]["plan"] is None and table.missing_cells == 3


def test_target_column_falls_back_to_target_and_is_named_when_missing(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("x,target\n1,a\n2,b\n")
    assert load_tabular_file(f).label_column == "target"
    g = tmp_path / "nolabel.csv"
    g.write_text("x,y\n1,a\n2,b\n")
    with pytest.raises(DataError, match=r"nolabel\.csv.*no target column 'label'.*\['x', 'y'\]"):
        load_tabular_file(g)
    with pytest.raises(DataError, match=r"no target column 'klass'"):
        load_tabular_file(g, label_column="klass")


def test_constant_target_is_a_data_error(tmp_path):
    f = tmp_path / "one.csv"
    f.write_text("x,label\n1,a\n2,a\n3,a\n")
    with pytest.raises(DataError, match=r"one\.csv.*1 class \('a'\).*at least 2 classes"):
        get_task("tabular-classification").prepare(DataSpec(source=str(f)), tmp_path)


def test_featurizer_imputes_flags_missing_and_one_hots(table):
    feat = TabularFeaturizer().fit(table.rows)
    x = feat.transform(table.rows)
    names = feat.feature_names()
    assert x.shape == (7, len(names)) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert names == ["age", "age=(missing)", "score", "score=(missing)", "plan=basic", "plan=premium",
                     "plan=(missing)", "plan=(other)"]
    age = np.array([34, 51, 36.5, 28, 39, 60, 22], dtype=np.float64)  # the missing age imputed with the median
    assert torch.allclose(x[:, 0].double(), torch.from_numpy((age - age.mean()) / age.std()), atol=1e-6)
    assert x[:, 1].tolist() == [0, 0, 1, 0, 0, 0, 0] and x[:, 3].tolist() == [0, 1, 0, 0, 0, 0, 0]
    assert x[3, 4:].tolist() == [0, 0, 1, 0]  # missing plan
    # The learned state is JSON and rebuilds the same featurizer.
    again = featurizer_from_config(json.loads(json.dumps(feat.config())))
    assert torch.equal(again.transform(table.rows), x)


def test_unseen_category_goes_to_other_bucket_and_still_predicts(table):
    feat = TabularFeaturizer().fit(table.rows)
    task = get_task("tabular-classification")
    rows, as_list = task.parse_json({"row": {"age": 40, "plan": "enterprise", "score": "0.4", "id": 7}},
                                    _Model(feat))
    assert not as_list and rows == [{"age": 40.0, "plan": "enterprise", "score": 0.4}]  # unknown 'id' ignored
    x = feat.transform(rows)
    assert x[0, feat.feature_names().index(f"plan={OTHER}")] == 1
    model = build_model({"family": "linear", "input_shape": [x.shape[1]], "num_classes": 2})
    assert model(x).shape == (1, 2)


def test_missing_column_and_non_numeric_value_name_the_column(table):
    feat = TabularFeaturizer().fit(table.rows)
    task = get_task("tabular-classification")
    with pytest.raises(InputError, match=r"field 'row': column 'score' missing"):
        task.parse_json({"row": {"age": 40, "plan": "basic"}}, _Model(feat))
    with pytest.raises(InputError, match=r"field 'instances\[1\]', column 'age': received 'old' \(str\); "
                                         r"expected a number"):
        task.parse_json({"instances": [{"age": 1, "plan": "a", "score": 1}, {"age": "old", "plan": "a", "score": 1}]},
                        _Model(feat))
    with pytest.raises(InputError, match=r"column 'plan': received list"):
        task.parse_json({"row": {"age": 1, "plan": [1], "score": None}}, _Model(feat))
    with pytest.raises(InputError, match=r"expected a field 'row'"):
        task.parse_json({"age": 1}, _Model(feat))
    with pytest.raises(InputError, match=r"column 'age' missing"):
        feat.transform([{"plan": "basic", "score": 1.0}])


def test_stored_rows_come_back_and_snapshot_round_trips(tmp_path):
    task = get_task("tabular-classification")
    ds = task.prepare(DataSpec(source="builtin:wine"), tmp_path)
    assert ds.kind == "tabular" and ds.class_names == ["class_0", "class_1", "class_2"]
    assert len(ds.report.table["numeric"]) == 13
    ds.save(tmp_path / "data")
    back = Dataset.load(tmp_path / "data", ds.fingerprint)
    assert back.splits["test"][0] == ds.splits["test"][0] and back.report.table == ds.report.table
    row = ds.splits["test"][0][0]
    rows, keep = task.collate([json.dumps(row), "not json", json.dumps({"alcohol": 1.0})], ds)
    assert keep == [True, False, False] and rows == [row]


@pytest.mark.parametrize("name", ["breast-cancer", "wine"])
def test_hgb_tensor_model_equals_sklearn(name):
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits

    t = load_tabular_builtin(name)
    x = np.array([[np.nan if v is None else v for v in r.values()] for r in t.rows])
    rng = np.random.default_rng(0)
    x[rng.random(x.shape) < 0.1] = np.nan  # missing values take each node's learned side
    x = x.astype(np.float32).astype(np.float64)
    classes = sorted(set(t.labels))
    y = np.array([classes.index(v) for v in t.labels])
    with threadpool_limits(limits=1, user_api="openmp"):  # see HGBNet.fit_direct
        clf = HistGradientBoostingClassifier(max_iter=60, random_state=0).fit(x, y)
        want = clf.decision_function(x)
    config = {"family": "hgb", "input_shape": [x.shape[1]], "num_classes": len(classes), "params": {}}
    model = build_model(config).load_sklearn(clf)
    with torch.inference_mode():
        logits = model(torch.from_numpy(x).float()).double().numpy()
    got = logits[:, 1] - logits[:, 0] if len(classes) == 2 else logits
    assert np.abs(got - want).max() < 1e-5
    # An artifact rebuilt from its config takes the fitted ensemble's shapes from the stored tensors.
    fresh = build_model(config)
    fresh.load_state_dict({k: v.clone() for k, v in model.state_dict().items()})
    with torch.inference_mode():
        assert torch.equal(fresh(torch.from_numpy(x).float()), model(torch.from_numpy(x).float()))


def test_hgb_fit_direct_reports_history_and_keeps_best_rounds():
    t = load_tabular_builtin("breast-cancer")
    feat = TabularFeaturizer().fit(t.rows[:400])
    classes = sorted(set(t.labels))
    y = torch.tensor([classes.index(v) for v in t.labels])
    model = build_model({"family": "hgb", "input_shape": [30], "num_classes": 2, "params": {"max_iter": 100}})
    out = model.fit_direct((feat.transform(t.rows[:400]), y[:400]), (feat.transform(t.rows[400:]), y[400:]),
                           {"max_iter": 100, "lr": 1e-3}, seed=0)
    assert out["best_val_score"] > 0.9 and 1 <= out["rounds"] <= 100
    assert set(out["history"][0]) == {"epoch", "train_loss", "val_loss", "val_accuracy"}
    assert model.feature_idx.shape[0] == out["rounds"]
