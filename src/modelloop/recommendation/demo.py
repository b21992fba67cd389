"""The recommendation demo: init -> run -> serve -> simulated users -> retrain -> gate.

MovieLens-100k, split in time: each user's earliest 85% of ratings are written to
``DIR/data/ratings.csv`` (with the movie titles and genres in ``DIR/data/movies.csv``) and are all
the project ever trains and tests on; each user's latest 15% are the future. Simulated users are
the dataset's own users: each asks ``GET /recommend`` over HTTP and clicks the recommended movies
it went on to rate in that future; a few new users (no history) get the popularity fallback. The
clicks go to ``POST /feedback``; then the project retrains on them and the ranking gate decides, on
the same test split as the first version (the clicks never touch it). Candidates are kept quick
(popularity, EASE, BPR, a 5-epoch two-tower) so the whole demo takes a minute or two on two cores.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from ..errors import ModelloopError

__all__ = ["run_recommendation_demo", "DEMO_CANDIDATES"]

log = logging.getLogger(__name__)
DEMO_CANDIDATES = ["popularity", "ease", {"kind": "bpr", "epochs": 20}, {"kind": "two-tower", "epochs": 5}]
#: share of each user's ratings (the latest) kept out of the project as the future users click on
FUTURE_SHARE = 0.15


def write_movielens_past(directory: Path) -> tuple[Path, Path, dict[str, set[str]]]:
    """MovieLens-100k split in time per user -> (ratings CSV of the past, movies CSV, future items per user)."""
    from ..data.interactions import load_movielens_100k

    data = load_movielens_100k()
    f = data.frame.sort_values(["user", "timestamp", "item"], kind="stable")
    rank = f.groupby("user").cumcount()
    size = f.groupby("user")["item"].transform("size")
    future = rank >= (size * (1 - FUTURE_SHARE)).round().astype(int)
    folder = directory / "data"
    folder.mkdir(parents=True, exist_ok=True)
    ratings, movies = folder / "ratings.csv", folder / "movies.csv"
    f.loc[~future, ["user", "item", "rating", "timestamp"]].to_csv(ratings, index=False)
    import pandas as pd

    pd.DataFrame({"item": list(data.item_text), "text": list(data.item_text.values())}).to_csv(movies, index=False)
    later: dict[str, set[str]] = {}
    for u, i in zip(f.loc[future, "user"], f.loc[future, "item"], strict=True):
        later.setdefault(str(u), set()).add(str(i))
    return ratings, movies, later


def run_recommendation_demo(directory: Path, traffic: int = 600, seed: int = 0, progress=None,
                            candidates: list | None = None, **init_options: Any) -> dict[str, Any]:
    """Run the loop on MovieLens-100k's past in ``directory`` (a new folder). Returns the summary."""
    from ..demo import BackgroundServer
    from ..project import Project
    from ..serve import create_app
    from ..serve.security import keys_for
    say = progress or (lambda m: log.info(m))
    t0 = time.perf_counter()
    directory.mkdir(parents=True, exist_ok=True)
    ratings, movies, held_out = write_movielens_past(directory)
    say(f"[demo] init {directory} on {ratings} (each user's earliest {1 - FUTURE_SHARE:.0%} of MovieLens-100k; "
        "NDCG@10 >= 0.05 required)")
    project = Project.init(directory, task="recommendation", data=str(ratings), name="movies",
                           candidates=candidates or DEMO_CANDIDATES, time_budget_s=600, timestamp_column="timestamp",
                           items=str(movies), item_id_column="item", item_text_columns=["text"], **init_options)
    first = project.run(progress=progress)
    if not first["champion"]:
        raise ModelloopError(f"the first version {first['version']} did not meet the requirements "
                             f"(test NDCG@10 {first['metrics']['ndcg@10']:.4f}); nothing to serve")
    rng = np.random.default_rng(seed)
    users = sorted(held_out)
    pick = [users[j] for j in rng.permutation(len(users))[:max(1, min(traffic, len(users)))]]
    new_users = [f"new-user-{j}" for j in range(max(1, len(pick) // 50))]
    app = create_app(project.path)
    keys, _ = keys_for(project.loop.spec.serving.keys, project.loop.paths.state / "keys.json")
    headers = {"Authorization": f"Bearer {(keys['client'] or keys['admin'])[0]}"}
    sent = clicks = 0
    lineage_of = None
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=30, headers=headers) as client:
        say(f"[demo] serving {first['version']} on {server.url}; {len(pick)} users and {len(new_users)} new users "
            "ask for 10 movies and click the ones they go on to watch")
        for u in [*pick, *new_users]:
            r = client.get("/recommend", params={"user": u, "k": 10})
            r.raise_for_status()
            rec = r.json()
            sent += 1
            for it in rec["items"]:
                if it["item"] in held_out.get(u, ()):
                    client.post("/feedback", json={"prediction_id": rec["prediction_id"], "kind": "click",
                                                   "label": it["item"]}).raise_for_status()
                    clicks += 1
                    lineage_of = lineage_of or rec["prediction_id"]
        say(f"[demo] {sent} requests, {clicks} clicks on recommended movies")
        second = project.retrain(progress=progress)
        served_after = client.get("/health").json()["model_version"]
    versions = [{"version": m["version"], "test_ndcg@10": m["ndcg@10"], "parent": m["parent"],
                 "feedback_examples": m["feedback_examples"], "aliases": m["aliases"]} for m in project.models()]
    return {
        "project": str(project.path), "task": "recommendation", "versions": versions,
        "champion": project.loop.registry.champion(), "decision": second["decision"],
        "reasons": second["evidence"]["reasons"],
        "traffic": {"requests": sent, "new_users": len(new_users), "clicks": clicks, "feedback": clicks,
                    "click_through": clicks / max(sent, 1)},
        "lineage": project.loop.lineage(prediction_id=lineage_of) if lineage_of else None,
        "served_after_retrain": served_after, "reports": [first["report"], second["report"]],
        "seconds": round(time.perf_counter() - t0, 1),
    }
