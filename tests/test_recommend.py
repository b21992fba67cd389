"""Recommendation core: interactions loading, splits, ranking metrics, and the three recommenders."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from modelloop.data.interactions import (
    Interactions,
    deduplicate,
    load_interactions,
    load_movielens_100k,
    random_split,
    stratified_split,
)
from modelloop.errors import DataError, InputError
from modelloop.evaluate.ranking import mae, ndcg_at_k, precision_at_k, ranking_metrics, recall_at_k, rmse
from modelloop.models.recommend import EASE, MatrixFactorization, Popularity, TwoTower, build_recommender


@pytest.fixture(scope="module")
def ml100k() -> Interactions:
    return load_movielens_100k()


@pytest.fixture(scope="module")
def dense_slice(ml100k: Interactions) -> Interactions:
    """The 200 most active users x the 300 most rated items: a small but real slice."""
    f = ml100k.frame
    items = f["item"].value_counts().index[:300]
    f = f[f["item"].isin(items)]
    users = f["user"].value_counts().index[:200]
    return ml100k.subset(f[f["user"].isin(users)])


def test_movielens_loads(ml100k: Interactions) -> None:
    assert len(ml100k) == 100_000 and ml100k.n_users == 943 and ml100k.n_items == 1682
    assert list(ml100k.frame.columns) == ["user", "item", "rating", "timestamp"]
    assert ml100k.item_text["1"] == "Toy Story | Animation Children's Comedy"
    assert ml100k.frame["rating"].between(1, 5).all()


def test_load_csv_parquet_and_unknown_column(tmp_path) -> None:
    frame = pd.DataFrame({"uid": [1, 1, 2], "iid": ["a", "b", "a"], "stars": [4, 5, 3]})
    frame.to_csv(tmp_path / "r.csv", index=False)
    frame.to_parquet(tmp_path / "r.parquet")
    for name in ("r.csv", "r.parquet"):
        data = load_interactions(tmp_path / name, user_col="uid", item_col="iid", rating_col="stars")
        assert data.frame["user"].tolist() == ["1", "1", "2"] and data.frame["rating"].tolist() == [4, 5, 3]
    implicit = load_interactions(tmp_path / "r.csv", user_col="uid", item_col="iid", rating_col=None)
    assert (implicit.frame["rating"] == 1).all()
    with pytest.raises(DataError) as err:
        load_interactions(tmp_path / "r.csv", user_col="user_id", item_col="iid", rating_col="stars")
    assert "user_id" in str(err.value) and "'uid', 'iid', 'stars'" in str(err.value)


def test_duplicates_latest_timestamp_else_mean() -> None:
    with_time = pd.DataFrame({"user": ["u", "u", "u", "v"], "item": ["a", "a", "a", "a"],
                              "rating": [1.0, 5.0, 3.0, 2.0], "timestamp": [10.0, 30.0, 20.0, 5.0]})
    out = deduplicate(with_time)
    assert out[out.user == "u"]["rating"].tolist() == [5.0] and len(out) == 2
    no_time = with_time.drop(columns="timestamp")
    out = deduplicate(no_time)
    assert out[out.user == "u"]["rating"].tolist() == [3.0]


def test_splits_deterministic_and_stratified(ml100k: Interactions) -> None:
    a_tr, a_te = random_split(ml100k, 0.2, seed=1)
    b_tr, b_te = random_split(ml100k, 0.2, seed=1)
    assert len(a_te) == 20_000 and a_te.frame.equals(b_te.frame) and a_tr.frame.equals(b_tr.frame)
    assert not random_split(ml100k, 0.2, seed=2)[1].frame.equals(a_te.frame)
    tr, te = stratified_split(ml100k, 0.75, seed=42)
    tr2, te2 = stratified_split(ml100k, 0.75, seed=42)
    assert tr.frame.equals(tr2.frame) and te.frame.equals(te2.frame) and len(tr) + len(te) == 100_000
    n = ml100k.frame.groupby("user").size()
    n_train = tr.frame.groupby("user").size()
    assert (n_train == np.round(0.75 * n)).all()                      # per-user 75 %, every user in train
    assert not set(zip(tr.frame.user, tr.frame.item, strict=True)) & set(zip(te.frame.user, te.frame.item, strict=True))


def test_metrics_hand_computed() -> None:
    assert rmse([1, 2, 3], [1, 2, 5]) == pytest.approx(math.sqrt(4 / 3))
    assert mae([1, 2, 3], [1, 2, 5]) == pytest.approx(2 / 3)
    recs = {"u1": ["a", "x", "b"], "u2": ["y", "z", "c"]}
    truth = {"u1": {"a", "b"}, "u2": {"c", "d", "e", "f"}}
    # u1 hits at ranks 1 and 3; u2 at rank 3.
    assert precision_at_k(recs, truth, 3) == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert recall_at_k(recs, truth, 3) == pytest.approx((2 / 2 + 1 / 4) / 2)
    d = [1 / math.log2(r + 1) for r in (1, 2, 3)]
    assert ndcg_at_k(recs, truth, 3) == pytest.approx(((d[0] + d[2]) / (d[0] + d[1]) + d[2] / sum(d)) / 2)
    assert ranking_metrics(recs, truth, 3)["users"] == 2
    with pytest.raises(InputError):
        ranking_metrics(recs, truth, 0)


def test_mf_beats_popularity_rmse_and_roundtrips(dense_slice: Interactions) -> None:
    tr, te = random_split(dense_slice, 0.2, seed=0)
    pop = Popularity().fit(tr)
    mf = MatrixFactorization({"factors": 16, "epochs": 40}).fit(tr)
    users, items = te.frame["user"].tolist(), te.frame["item"].tolist()
    pop_rmse, mf_rmse = rmse(te.frame["rating"], pop.predict(users, items)), rmse(te.frame["rating"],
                                                                                    mf.predict(users, items))
    assert mf_rmse < pop_rmse - 0.02, (mf_rmse, pop_rmse)
    clone = build_recommender(mf.get_config())
    clone.load_state_dict(mf.state_dict())
    assert np.allclose(clone.predict(users, items), mf.predict(users, items))
    assert clone.recommend(users[:5], 5) == mf.recommend(users[:5], 5)


def test_recommend_excludes_seen_fallback_and_similar(dense_slice: Interactions) -> None:
    mf = MatrixFactorization({"factors": 8, "epochs": 5}).fit(dense_slice)
    user = dense_slice.frame["user"].iloc[0]
    seen = set(mf.seen_items(user))
    assert seen == set(dense_slice.frame.loc[dense_slice.frame.user == user, "item"])
    recs = mf.recommend([user], 20)[0]
    assert len(recs) == min(20, 300 - len(seen)) and not set(recs) & seen
    assert set(mf.recommend([user], 300, exclude_seen=False)[0]) & seen
    pop = Popularity().fit(dense_slice)
    assert mf.recommend(["no-such-user"], 5) == [pop.recommend(["no-such-user"], 5)[0]]
    counts = dense_slice.frame["item"].value_counts()
    top = pop.recommend(["no-such-user"], 5)[0]
    assert counts[top].tolist() == counts.iloc[:5].tolist()          # the most rated items (ties in any order)
    similar = mf.similar_items(top[0], 5)
    assert len(similar) == 5 and top[0] not in similar
    with pytest.raises(InputError):
        mf.similar_items("no-such-item")
    with pytest.raises(InputError):
        mf.recommend("u1", 5)


def test_two_tower_ranks_better_than_popularity_and_cold_items(dense_slice: Interactions) -> None:
    tr, te = stratified_split(dense_slice, 0.75, seed=0)
    truth = te.frame.groupby("user")["item"].apply(set).to_dict()
    users = sorted(truth)
    pop = Popularity().fit(tr)
    tt = TwoTower({"dim": 32, "epochs": 20, "lr": 0.005, "batch_size": 256, "reg": 0.2}).fit(tr, dense_slice.item_text)
    p_pop = precision_at_k(dict(zip(users, pop.recommend(users, 10), strict=True)), truth, 10)
    p_tt = precision_at_k(dict(zip(users, tt.recommend(users, 10), strict=True)), truth, 10)
    assert p_tt > p_pop, (p_tt, p_pop)
    # A new item with no interactions gets a vector from its text alone.
    assert len(tt.items) == tr.n_items
    tt.add_items(["new-1"], ["Toy Story 3 | Animation Children's Comedy"])
    near = tt.similar_items("new-1", 10)
    assert len(near) == 10 and tt.recommend([users[0]], 1, candidates=["new-1"]) == [["new-1"]]


def test_ease_ranks_roundtrips_and_falls_back(dense_slice: Interactions) -> None:
    tr, te = stratified_split(dense_slice, 0.75, seed=0)
    truth = te.frame.groupby("user")["item"].apply(set).to_dict()
    users = sorted(truth)
    pop = Popularity().fit(tr)
    ease = build_recommender({"kind": "ease", "l2": 200.0}).fit(tr)
    assert isinstance(ease, EASE) and ease.weights.shape == (tr.n_items, tr.n_items)
    assert float(ease.weights.diagonal().abs().max()) == 0.0
    p_pop = precision_at_k(dict(zip(users, pop.recommend(users, 10), strict=True)), truth, 10)
    p_ease = precision_at_k(dict(zip(users, ease.recommend(users, 10), strict=True)), truth, 10)
    assert p_ease > p_pop + 0.02, (p_ease, p_pop)
    # Saved state + config rebuild the same model.
    clone = build_recommender(ease.get_config())
    clone.load_state_dict(ease.state_dict())
    assert clone.recommend(users, 10) == ease.recommend(users, 10)
    pairs_u, pairs_i = te.frame["user"].tolist()[:50], te.frame["item"].tolist()[:50]
    assert np.allclose(clone.predict(pairs_u, pairs_i), ease.predict(pairs_u, pairs_i))
    # predict = the score the ranking uses; unknown ids score 0.
    scores = ease.score_matrix(pairs_u, exclude_seen=False)
    expected = [float(scores[k, ease.item_index[it]]) for k, it in enumerate(pairs_i)]
    assert np.allclose(ease.predict(pairs_u, pairs_i), expected, atol=1e-5)
    assert ease.predict(["no-such-user", pairs_u[0]], [pairs_i[0], "no-such-item"]).tolist() == [0.0, 0.0]
    # Seen items excluded; unknown users get the most popular items.
    user = users[0]
    seen = set(ease.seen_items(user))
    assert seen == set(tr.frame.loc[tr.frame.user == user, "item"])
    recs = ease.recommend([user], 300)[0]
    assert len(recs) == tr.n_items - len(seen) and not set(recs) & seen
    assert ease.recommend(["no-such-user"], 5) == pop.recommend(["no-such-user"], 5)
    similar = ease.similar_items(recs[0], 5)
    assert len(similar) == 5 and recs[0] not in similar
    for bad in (0, -1.0, "500"):
        with pytest.raises(InputError):
            EASE({"l2": bad})


def test_bpr_several_negatives_validates_and_roundtrips(dense_slice: Interactions) -> None:
    tr, _ = stratified_split(dense_slice, 0.75, seed=0)
    cfg = {"loss": "bpr", "factors": 8, "epochs": 3, "lr": 0.005, "reg": 0.01, "negatives": 4}
    a, b = MatrixFactorization(cfg).fit(tr), MatrixFactorization(cfg).fit(tr)
    users = sorted(set(tr.frame["user"]))[:10]
    assert a.recommend(users, 10) == b.recommend(users, 10)           # seeded: deterministic
    clone = build_recommender(a.get_config())
    clone.load_state_dict(a.state_dict())
    assert clone.recommend(users, 10) == a.recommend(users, 10)
    for bad in (0, 1.5, True):
        with pytest.raises(InputError):
            MatrixFactorization({"loss": "bpr", "negatives": bad})
