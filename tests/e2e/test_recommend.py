"""Recommendation through the whole loop: init -> run -> serve -> /recommend, /similar ->
feedback on recommended items -> retrain -> gate -> lineage.

Real data (a dense slice of MovieLens-100k written as CSV files, with a duplicated row), the
real CLI, a real server on loopback (stopped by its process id), the real SQLite store.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from modelloop.data.interactions import load_movielens_100k
from tests.conftest import cli, cli_json

pytestmark = pytest.mark.slow

CANDIDATES = ["popularity", {"kind": "mf", "epochs": 5}, {"kind": "bpr", "epochs": 10},
              {"kind": "two-tower", "epochs": 2}]


@pytest.fixture(scope="module")
def movielens_files(tmp_path_factory):
    """150 most active users x 250 most rated movies, plus the movie table; one (user, item)
    pair appears twice, the later row with another rating (the latest must win)."""
    ml = load_movielens_100k()
    f = ml.frame
    f = f[f["item"].isin(f["item"].value_counts().index[:250])]
    f = f[f["user"].isin(f["user"].value_counts().index[:150])].reset_index(drop=True)
    dup = f.iloc[[0]].copy()
    dup["timestamp"] += 1000
    dup["rating"] = 1.0 if f.iloc[0]["rating"] != 1.0 else 5.0
    frame = pd.concat([f, dup], ignore_index=True)
    root = tmp_path_factory.mktemp("movielens")
    frame.rename(columns={"user": "user_id", "item": "movie_id", "rating": "stars", "timestamp": "ts"}).to_csv(
        root / "ratings.csv", index=False)
    texts = ml.item_text
    pd.DataFrame({"movie_id": list(texts), "title": [t.split(" | ")[0] for t in texts.values()],
                  "genres": [t.split(" | ", 1)[1] if " | " in t else "" for t in texts.values()]}
                 ).to_csv(root / "movies.csv", index=False)
    return root, (str(dup.iloc[0]["user"]), str(dup.iloc[0]["item"]), float(dup.iloc[0]["rating"]))


def _init(proj, root, *extra: str) -> dict:
    return cli_json("init", str(proj), "--task", "recommendation", "--data", str(root / "ratings.csv"),
                    "--user-column", "user_id", "--item-column", "movie_id", "--rating-column", "stars",
                    "--timestamp-column", "ts", "--items", str(root / "movies.csv"), "--item-text-columns",
                    "title,genres", *extra)


def test_recommendation_project_runs_serves_and_learns_from_clicks(tmp_path, serve, movielens_files):
    root, (dup_user, dup_item, dup_rating) = movielens_files
    proj = tmp_path / "proj"
    out = _init(proj, root, "--target", "0.05")
    content = out["spec_content"]
    assert content["task"] == "recommendation"
    assert content["requirements"]["metric"] == "ndcg@10" and content["requirements"]["target"] == 0.05
    assert content["recommendation"]["user_column"] == "user_id"
    spec = yaml.safe_load((proj / "modelloop.yaml").read_text())
    spec["recommendation"]["candidates"] = CANDIDATES
    (proj / "modelloop.yaml").write_text(yaml.safe_dump(spec))

    res = cli_json("run", str(proj), timeout=600)
    assert res["champion"] and res["passed"] and res["metrics"]["ndcg@10"] >= 0.05
    assert res["metrics"]["rmse"] is None or res["metrics"]["rmse"] > 0
    v1 = res["version"]
    m = json.loads((proj / "registry" / "versions" / v1 / "manifest.json").read_text())
    assert m["task"] == "recommendation" and m["run_id"] == res["run_id"]
    assert "per-user stratified" in m["dataset"]["split_protocol"]
    assert m["dataset"]["report"]["duplicates_removed"] == 1
    assert "latest row wins" in m["dataset"]["duplicate_rule"]
    board = m["selection"]["leaderboard"]
    assert {r["kind"] for r in board} == {"popularity", "mf", "two_tower"} and len(board) == 4
    assert all(r["val"]["ndcg@10"] is not None for r in board)
    explicit_mf = next(r for r in board if r["candidate"].startswith("mf"))
    assert explicit_mf["val"]["rmse"] is not None  # explicit ratings: RMSE of the rating models
    models = cli_json("models", str(proj))
    assert models["champion"] == v1 and models["versions"][0]["ndcg@10"] == pytest.approx(res["metrics"]["ndcg@10"])
    assert (proj / "reports" / f"{v1}.html").is_file()

    # the duplicate rule: the later row's rating is the one the model was trained on
    from modelloop.tasks.recommendation import load_splits

    splits, _ = load_splits(proj / ".modelloop" / "data", res["dataset"])
    every = pd.concat([s.frame for s in splits.values()])
    pair = every[(every["user"] == dup_user) & (every["item"] == dup_item)]
    assert len(pair) == 1 and float(pair["rating"].iloc[0]) == dup_rating

    server = serve(proj)
    c = server.client
    auth = server.auth("client")
    known = sorted(splits["train"].frame["user"].unique())[0]
    r = c.get("/recommend", params={"user": known, "k": 10, "exclude_seen": "true"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == v1 and body["fallback"] is None and len(body["items"]) == 10
    seen = set(splits["train"].frame.loc[splits["train"].frame["user"] == known, "item"])
    assert not seen & {i["item"] for i in body["items"]}
    assert all(i["title"] for i in body["items"])
    # The Python API gives what the server serves, without logging it; predict points to recommend.
    from modelloop import Project
    from modelloop.errors import InputError

    offline = Project(proj).recommend(known, 10)
    assert [i["item"] for i in offline["items"]] == [i["item"] for i in body["items"]]
    assert Project(proj).similar(body["items"][0]["item"], 3)["model_version"] == v1
    with pytest.raises(InputError, match="recommend"):
        Project(proj).predict(["x"])
    new = c.get("/recommend", params={"user": "someone-new", "k": 5}).json()
    assert new["fallback"] == "popularity" and len(new["items"]) == 5
    sim = c.get("/similar", params={"item": body["items"][0]["item"], "k": 5})
    assert sim.status_code == 200 and len(sim.json()["items"]) == 5
    assert body["items"][0]["item"] not in {i["item"] for i in sim.json()["items"]}
    bad = c.get("/similar", params={"item": "no-such-movie"})
    assert bad.status_code == 404 and "no-such-movie" in bad.json()["detail"]
    for params, needle in (({"k": 10}, "'user': missing"), ({"user": known, "k": 0}, "received 0"),
                           ({"user": known, "k": 100000}, "from 1 to"), ({"user": known, "k": "ten"}, "'ten'")):
        r = c.get("/recommend", params=params)
        assert r.status_code == 422 and needle in r.json()["detail"], (params, r.text)
    r = c.post("/predict", json={"row": {}})
    assert r.status_code == 422 and "/recommend" in r.json()["detail"]

    # simulated users click the recommended movies they go on to rate (their test items)
    held_out = splits["test"].frame.groupby("user")["item"].apply(set).to_dict()
    pids, clicked = [], 0
    for user in sorted(held_out):
        rec = c.get("/recommend", params={"user": user, "k": 10}).json()
        pids.append(rec["prediction_id"])
        for it in rec["items"]:
            if it["item"] in held_out[user]:
                r = c.post("/feedback", json={"prediction_id": rec["prediction_id"], "kind": "click",
                                              "label": it["item"]}, headers=auth)
                assert r.status_code == 201, r.text
                clicked += 1
    assert clicked > 60
    r = c.post("/feedback", json={"prediction_id": pids[0], "kind": "rating", "value": 5, "label": "not-a-movie"},
               headers=auth)
    assert r.status_code == 422 and "'label'" in r.json()["detail"] and "not-a-movie" in r.json()["detail"]
    r = c.post("/feedback", json={"prediction_id": pids[0], "kind": "rating", "value": 4,
                                  "label": body["items"][0]["item"]}, headers=auth)
    assert r.status_code == 201
    server.stop()

    proc = cli("retrain", str(proj), "--json", timeout=600)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    rt = json.loads(proc.stdout)
    assert rt["parent"] == v1 and rt["feedback_examples"] > 20 and rt["feedback_holdout"] > 5
    assert rt["decision"] in ("promoted", "rejected")
    ev = rt["evidence"]
    assert ev["test"]["n_users"] > 100 and "Wilcoxon" in ev["test"]["method"]
    assert ev["feedback"]["held_out_clicks"] > 5
    v2 = rt["version"]
    m2 = json.loads((proj / "registry" / "versions" / v2 / "manifest.json").read_text())
    assert m2["parent"] == v1 and m2["gate"]["decision"] == rt["decision"]
    events = [json.loads(line) for line in (proj / "registry" / "events.jsonl").read_text().splitlines()]
    assert any(e["event"] == "gate" and e["version"] == v2 for e in events)
    assert cli_json("models", str(proj))["champion"] == (v2 if rt["decision"] == "promoted" else v1)

    # lineage: a prediction -> the version that served it -> run -> dataset, and which version trained on it
    lin_v2 = cli_json("lineage", str(proj), "--version", v2)
    trained_on = lin_v2["feedback_ids"]
    assert len(trained_on) == rt["feedback_examples"]
    lin = cli_json("lineage", str(proj), "--prediction", trained_on[0])
    assert lin["model_version"] == v1 and lin["run"] == res["run_id"]
    assert lin["dataset_fingerprint"] == res["dataset"] and v2 in lin["trained_into"]
    assert lin["feedback"] and lin["feedback"][0]["kind"] in ("click", "rating")


def test_recommendation_bad_inputs_exit_2(tmp_path, movielens_files):
    root, _ = movielens_files
    proc = cli("init", str(tmp_path / "a"), "--task", "recommendation", "--data", str(root / "ratings.csv"),
               "--user-column", "uid", "--item-column", "movie_id")
    assert proc.returncode == 2 and "'uid'" in proc.stderr and "user_id" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = cli("init", str(tmp_path / "b"), "--task", "recommendation", "--data", str(root / "missing.csv"))
    assert proc.returncode == 2 and "missing.csv" in proc.stderr and "no such file" in proc.stderr
    proc = cli("init", str(tmp_path / "c"), "--task", "recommendation", "--data", "builtin:movielens-1m")
    assert proc.returncode == 2 and "builtin:movielens-100k" in proc.stderr
    proc = cli("init", str(tmp_path / "d"), "--task", "recommendation", "--metric", "accuracy")
    assert proc.returncode == 2 and "ranking metric" in proc.stderr and "ndcg@10" in proc.stderr
    proc = cli("init", str(tmp_path / "e"), "--task", "tabular-classification", "--user-column", "u")
    assert proc.returncode == 2 and "--task recommendation" in proc.stderr


def test_recommendation_demo_runs_the_loop(tmp_path):
    """The demo trains on each user's past and clicks on the future: the test split is the same for
    both versions, so their test NDCG@10 are comparable."""
    from modelloop.demo import run_recommendation_demo

    res = run_recommendation_demo(tmp_path / "demo", traffic=200, candidates=["popularity", "ease"])
    assert res["traffic"]["requests"] == 204 and res["traffic"]["clicks"] > 50
    assert res["decision"] in ("promoted", "rejected") and res["reasons"]
    versions = {v["version"]: v for v in res["versions"]}
    assert list(versions) == ["v1", "v2"]
    assert versions["v1"]["test_ndcg@10"] > 0.3  # EASE on the past; popularity stays near 0.2
    assert abs(versions["v2"]["test_ndcg@10"] - versions["v1"]["test_ndcg@10"]) < 0.05
    assert res["served_after_retrain"] == res["champion"]
    assert res["lineage"]["model_version"] == "v1"
    past = (tmp_path / "demo" / "data" / "ratings.csv").read_text().count("\n") - 1
    assert 80_000 < past < 90_000  # each user's earliest 85% of the 100,000 ratings


def test_predict_on_a_recommendation_project_points_to_recommend(tmp_path, movielens_files):
    root, _ = movielens_files
    _init(tmp_path / "p", root)
    proc = cli("predict", str(tmp_path / "p"), "--text", "hello")
    assert proc.returncode == 2 and "/recommend" in proc.stderr and "Traceback" not in proc.stderr
