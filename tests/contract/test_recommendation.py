"""The recommendation contract, for every recommender kind, on a small real slice of MovieLens-100k.

- fit -> register in a real LocalRegistry -> load -> identical recommendations, similar items and
  rating estimates;
- a request over HTTP (a real uvicorn server) answers the same list as the in-process model;
- the spec, data and request checks answer clear errors; other tasks' servers have no /recommend.
"""

from __future__ import annotations

import httpx
import pandas as pd
import pytest
import torch

from modelloop import Project
from modelloop.data.interactions import Interactions, load_movielens_100k
from modelloop.errors import DataError, SpecError
from modelloop.models import recommend as rec_models
from modelloop.registry import LocalRegistry
from modelloop.spec import RecommendationSpec, parse_spec
from modelloop.tasks import check_spec
from modelloop.tasks.recommendation import (
    ALIASES,
    candidate_configs,
    load_data,
    load_version,
    register_recommender,
    split_data,
)

SMALL = {"mf": {"epochs": 3}, "bpr": {"epochs": 3}, "two-tower": {"epochs": 1}}
KINDS = ["popularity", "mf", "bpr", "two-tower"] + sorted(
    k for k in getattr(rec_models, "_KINDS", {}) if k not in {a for a, _ in ALIASES.values()} and k not in ALIASES)


@pytest.fixture(scope="module")
def ml100k() -> Interactions:
    return load_movielens_100k()


@pytest.fixture(scope="module")
def small(ml100k: Interactions) -> Interactions:
    f = ml100k.frame
    f = f[f["item"].isin(f["item"].value_counts().index[:150])]
    return ml100k.subset(f[f["user"].isin(f["user"].value_counts().index[:100])])


@pytest.mark.parametrize("kind", KINDS)
def test_fit_register_load_gives_identical_recommendations(tmp_path, small, kind):
    entry = {"kind": kind, **SMALL.get(kind, {})}
    cfg = candidate_configs(RecommendationSpec(candidates=[entry]), explicit=True)[0]["config"]
    model = rec_models.build_recommender(dict(cfg)).fit(small)
    registry = LocalRegistry(tmp_path / "registry")
    version = register_recommender(registry, {"task": "recommendation", "model": {"config": cfg}}, model,
                                   small.item_text)
    loaded = load_version(registry, version)
    users = sorted(small.frame["user"].unique())[:30] + ["unknown-user"]
    assert loaded.model.recommend(users, 10) == model.recommend(users, 10)
    assert loaded.model.recommend(users, 10, exclude_seen=False) == model.recommend(users, 10, exclude_seen=False)
    item = model.items[0]
    assert loaded.model.similar_items(item, 5) == model.similar_items(item, 5)
    pairs = small.frame.head(50)
    assert torch.allclose(torch.from_numpy(loaded.model.predict(list(pairs["user"]), list(pairs["item"]))),
                          torch.from_numpy(model.predict(list(pairs["user"]), list(pairs["item"]))))
    assert loaded.title("1") == "Toy Story"


def test_request_answers_what_the_in_process_model_recommends(tmp_path, small):
    from modelloop.demo import BackgroundServer
    from modelloop.serve import create_app

    data = tmp_path / "ratings.csv"
    small.frame.to_csv(data, index=False)
    p = Project.init(tmp_path / "proj", task="recommendation", data=str(data), timestamp_column="timestamp",
                     candidates=["popularity", {"kind": "bpr", "epochs": 3}], target=0.01)
    res = p.run()
    assert res["champion"]
    model = load_version(p.loop.registry, res["version"]).model
    users = sorted(small.frame["user"].unique())[:10] + ["new-user"]
    with BackgroundServer(create_app(p.path)) as server:
        for u in users:
            body = httpx.get(f"{server.url}/recommend", params={"user": u, "k": 7}).json()
            assert [i["item"] for i in body["items"]] == model.recommend([u], 7)[0]
            assert body["fallback"] == (None if u != "new-user" else "popularity")
        sim = httpx.get(f"{server.url}/similar", params={"item": model.items[3], "k": 4}).json()
        assert [i["item"] for i in sim["items"]] == model.similar_items(model.items[3], 4)
    # every answer was logged as a prediction of the served version
    assert p.loop.store.predictions_for(res["version"]) == len(users)


def test_other_tasks_refuse_recommend(tmp_path):
    from modelloop.demo import BackgroundServer
    from modelloop.serve import create_app

    p = Project.init(tmp_path / "tab", task="tabular-classification")
    with BackgroundServer(create_app(p.path)) as server:
        # the recommendation task adds /recommend and /similar; a server of another task has neither
        assert httpx.get(f"{server.url}/recommend", params={"user": "1"}).status_code == 404
        assert httpx.get(f"{server.url}/similar", params={"item": "1"}).status_code == 404
        paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
        assert "/recommend" not in paths and "/similar" not in paths


def _spec(**over):
    base = {"task": "recommendation", "data": {"source": "builtin:movielens-100k"}}
    base.update(over)
    spec = parse_spec(base)
    check_spec(spec)
    return spec


def test_spec_checks():
    s = _spec()
    assert s.requirements.metric == "ndcg@10" and s.requirements.target is None  # no target: beat popularity
    assert _spec(requirements={"metric": "recall@10", "target": 0.1}).requirements.metric == "recall@10"
    with pytest.raises(SpecError, match="not a ranking metric"):
        _spec(requirements={"metric": "accuracy"})
    with pytest.raises(SpecError, match="unknown candidate 'svd'"):
        _spec(recommendation={"candidates": ["svd"]})
    with pytest.raises(SpecError, match="factors"):
        _spec(recommendation={"candidates": [{"kind": "mf", "factors": -1}]})
    with pytest.raises(SpecError, match="recommendation.candidates"):
        _spec(selection={"candidates": ["linear"]})
    with pytest.raises(SpecError, match="classification metric"):
        check_spec(parse_spec({"task": "image-classification", "data": {"source": "builtin:seed-case"},
                               "requirements": {"metric": "ndcg@10"}}))
    names = [c["config"] for c in candidate_configs(RecommendationSpec(), explicit=False)]
    assert {"kind": "mf", "loss": "bpr", "lr": 0.005, "reg": 0.01, "negatives": 4, "epochs": 100} in names
    assert {"kind": "ease"} in names and all(c.get("loss") != "mse" for c in names)


def test_duplicates_missing_columns_and_tiny_data(tmp_path):
    base = [(u, f"x{j}", 1 + (j + k) % 5, 10 * k + j) for k, u in enumerate("ab") for j in range(8)]
    rows = pd.DataFrame([*base, ("a", "x0", 5, 99)], columns=["u", "i", "r", "t"])  # a re-rates x0 later
    rows.to_csv(tmp_path / "r.csv", index=False)
    for ts, expected in (("t", 5.0), (None, 3.0)):  # latest wins with a timestamp, else the mean (1 and 5)
        spec = _spec(data={"source": str(tmp_path / "r.csv")},
                     recommendation={"user_column": "u", "item_column": "i", "rating_column": "r",
                                     "timestamp_column": ts})
        data, report = load_data(spec, tmp_path)
        assert report["duplicates_removed"] == 1
        f = data.frame
        assert float(f.loc[(f["user"] == "a") & (f["item"] == "x0"), "rating"].iloc[0]) == expected
        splits, protocol = split_data(data, spec.data.split)
        assert "per-user stratified" in protocol and set(splits["train"].frame["user"]) == {"a", "b"}
    spec = _spec(data={"source": str(tmp_path / "r.csv")}, recommendation={"user_column": "user"})
    with pytest.raises(DataError) as err:
        load_data(spec, tmp_path)
    assert "'user'" in str(err.value) and "'u', 'i', 'r', 't'" in str(err.value)
    rows.head(2).to_csv(tmp_path / "tiny.csv", index=False)
    spec = _spec(data={"source": str(tmp_path / "tiny.csv")},
                 recommendation={"user_column": "u", "item_column": "i", "rating_column": "r"})
    with pytest.raises(DataError, match="at least 2"):
        load_data(spec, tmp_path)
