"""Semi-supervised retraining: served inputs nobody gave feedback on become pseudo-labelled
training inputs, and never reach the validation split, the test split or the gate's evidence.

Real stores, real data (MNIST digits), real training through the command line on the cheapest
image project (see ``tests/e2e/tiny_projects.py``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid

import numpy as np
import pytest
import torch
import yaml

from modelloop.data import Dataset
from modelloop.data.transforms import ImageViews
from modelloop.feedback import FeedbackStore, prediction_row
from modelloop.feedback.sampling import trained_fingerprint
from modelloop.feedback.unlabelled import unlabelled_inputs
from modelloop.registry.store import open_registry
from modelloop.settings import ProjectPaths
from tests.conftest import cli


def _key(x) -> str:
    return hashlib.sha256(np.ascontiguousarray(np.asarray(x, dtype=np.float32)).tobytes()).hexdigest()


def _log(store: FeedbackStore, images, version: str = "v1", label: str = "0") -> list[str]:
    ids = [uuid.uuid4().hex for _ in images]
    store.log_many([prediction_row(pid, version, im, label, {label: 1.0}, 1.0) for pid, im in zip(ids, images,
                                                                                                  strict=True)])
    return ids


# -- the store: which predictions count as unlabelled ---------------------------------------------
def test_unlabelled_inputs_leave_out_feedback_repeats_and_untrusted_inputs(tmp_path):
    store = FeedbackStore(f"sqlite:///{tmp_path / 'fb.db'}")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 1, 8, 8)).astype(np.uint8)
    ids = _log(store, images)
    store.add_feedback(ids[0], "1")                       # labelled: not unlabelled
    store.add_feedback(ids[1], "0", kind="thumbs", value=1)
    store.add_feedback(ids[2], "1", client="bad-client")  # an untrusted client's input
    again = _log(store, images[[0, 2, 5]])                # served again without feedback
    _, got = unlabelled_inputs(store)
    # 0 and 2 are left out wherever they were served; 5 appears once (its latest prediction)
    expected = set(ids[3:]) - {ids[5]} | {again[2]}
    assert set(got) == expected and len(got) == len(expected)
    items, limited = unlabelled_inputs(store, limit=4)
    assert len(limited) == 4 and all(i.shape == (1, 8, 8) for i in items)


def test_views_keep_the_shape_and_move_pixels():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 1, 28, 28)
    views = ImageViews()
    weak, strong = views.weak(x, g), views.strong(x, g)
    assert weak.shape == strong.shape == x.shape
    assert not torch.equal(strong, x)
    assert json.dumps(views.describe())


# -- the spec switch ------------------------------------------------------------------------------
@pytest.mark.parametrize("field, value, expected", [
    ("semi_supervised", "maybe", "'auto', 'on' or 'off'"),
    ("pseudo_label_threshold", 0.3, "greater than 0.5"),
    ("unlabelled_ratio", 0, "greater than or equal to 1"),
])
def test_bad_spec_values_exit_2_naming_the_field(tmp_path, field, value, expected):
    proj = tmp_path / "p"
    cli("init", proj, "--task", "image-classification", "--data", "builtin:seed-case", check=True)
    spec = yaml.safe_load((proj / "modelloop.yaml").read_text())
    spec.setdefault("feedback", {})[field] = value
    (proj / "modelloop.yaml").write_text(yaml.safe_dump(spec))
    proc = cli("retrain", proj, "--json")
    assert proc.returncode == 2, proc.stderr
    assert f"feedback.{field}" in proc.stderr and str(value) in proc.stderr and expected in proc.stderr


def test_on_is_refused_where_the_task_cannot(tmp_path):
    proj = tmp_path / "t"
    cli("init", proj, "--task", "text-classification", "--data", "builtin:rotten-tomatoes", check=True)
    spec = yaml.safe_load((proj / "modelloop.yaml").read_text())
    spec.setdefault("feedback", {})["semi_supervised"] = "on"
    (proj / "modelloop.yaml").write_text(yaml.safe_dump(spec))
    proc = cli("retrain", proj, "--json")
    assert proc.returncode == 2
    assert "feedback.semi_supervised" in proc.stderr and "'on'" in proc.stderr and "'auto' or 'off'" in proc.stderr


# -- a retrain through the command line --------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The tiny image project after serving: predictions of validation and test images, of new
    images, labelled predictions (some of them served again without feedback) and an untrusted
    client's labelled input served again."""
    from tests.e2e.tiny_projects import build

    proj = build("image-classification", tmp_path_factory.mktemp("semi") / "image")
    paths = ProjectPaths(proj)
    reg = open_registry(paths.registry)
    base = reg.manifest("v1")["dataset"]["base_fingerprint"]
    ds = Dataset.load(paths.data, base)
    names = ds.class_names
    xtr, ytr = ds.splits["train"]
    xva, xte = ds.splits["val"][0], ds.splits["test"][0]
    store = FeedbackStore(paths.store_url(None))
    # new content: training images with a few pixels changed
    rng = np.random.default_rng(1)
    new = xtr.numpy().copy()
    new[:, 0, 0, :] = rng.integers(0, 256, size=(len(new), new.shape[-1]))
    new_ids = _log(store, new)
    evaluated_ids = _log(store, np.concatenate([xva.numpy(), xte.numpy()]))
    labelled_src = xtr.numpy()[: len(xtr) // 2]
    labelled_ids = _log(store, labelled_src)
    for pid, y in zip(labelled_ids, ytr[: len(labelled_src)].tolist(), strict=True):
        store.add_feedback(pid, names[y])
    repeat_ids = _log(store, labelled_src[:5])
    bad = xtr.numpy()[len(xtr) // 2:][:3]
    bad_ids = _log(store, bad)
    for pid in bad_ids:
        store.add_feedback(pid, names[0], client="untrusted-client")
    bad_again = _log(store, bad)
    store.close()
    spec = yaml.safe_load((proj / "modelloop.yaml").read_text())
    spec["feedback"] = {"untrusted_clients": ["untrusted-client"], "holdout_fraction": 0.3}
    (proj / "modelloop.yaml").write_text(yaml.safe_dump(spec))
    return {"proj": proj, "ds": ds, "new": new_ids, "evaluated": evaluated_ids, "labelled": labelled_ids,
            "repeat": repeat_ids, "bad": bad_ids + bad_again}


def _copy(served, tmp_path, **feedback) -> tuple:
    proj = tmp_path / "proj"
    shutil.copytree(served["proj"], proj)
    if feedback:
        spec = yaml.safe_load((proj / "modelloop.yaml").read_text())
        spec["feedback"].update(feedback)
        (proj / "modelloop.yaml").write_text(yaml.safe_dump(spec))
    return proj, ProjectPaths(proj)


def _run_dir(paths: ProjectPaths, version: str):
    run_id = open_registry(paths.registry).manifest(version)["run_id"]
    return paths.runs / run_id


def test_retrain_learns_from_unlabelled_inputs_that_never_reach_evaluation(served, tmp_path):
    proj, paths = _copy(served, tmp_path, semi_supervised="on")
    proc = cli("retrain", proj, "--json", "--force")
    assert proc.returncode in (0, 1), proc.stderr[-3000:]  # promoted or rejected: both are a finished retrain
    res = json.loads(proc.stdout)
    version = res["version"]
    manifest = open_registry(paths.registry).manifest(version)
    semi = manifest["semi_supervised"]
    run_dir = _run_dir(paths, version)
    unlabelled = json.loads((run_dir / "unlabelled_ids.json").read_text())
    holdout = json.loads((run_dir / "holdout_ids.json").read_text())
    validation = json.loads((run_dir / "validation_ids.json").read_text())
    trained = json.loads((run_dir / "feedback_ids.json").read_text())

    # exactly the new images: no evaluated, labelled, repeated or untrusted input
    assert set(unlabelled) == set(served["new"])
    assert semi["used"] is True and semi["unlabelled_examples"] == len(served["new"])
    assert semi["threshold"] == 0.95 and 0 <= semi["passed"] <= len(served["new"])
    assert sum(semi["pseudo_labels"].values()) == semi["passed"]
    # nothing unlabelled in what validates or judges the challenger
    assert not set(unlabelled) & (set(holdout) | set(validation) | set(trained))
    assert set(holdout) | set(validation) | set(trained) <= set(served["labelled"])
    ds = served["ds"]
    evaluated = {_key(x) for x in ds.splits["val"][0].numpy()} | {_key(x) for x in ds.splits["test"][0].numpy()}
    new_inputs = _inputs_of(paths, unlabelled)
    assert len(new_inputs) == len(unlabelled)
    assert not {_key(x) for x in new_inputs} & evaluated
    holdout_inputs = {_key(x) for x in _inputs_of(paths, holdout)}
    assert not {_key(x) for x in new_inputs} & holdout_inputs
    # the gate's evidence is the labelled hold-out alone, the test split the frozen one
    gate = manifest["gate"]
    if holdout and gate.get("feedback"):
        assert gate["feedback"]["n"] == len(holdout)
    assert manifest["dataset"]["test_examples"] == len(ds.splits["test"][1])
    assert manifest["dataset"]["fingerprint"] == trained_fingerprint(
        ds.fingerprint, trained + [f"unlabelled:{i}" for i in unlabelled])


def _inputs_of(paths: ProjectPaths, ids: list[str]) -> list[np.ndarray]:
    import sqlalchemy as sa

    from modelloop.feedback.store import _decode_input, predictions

    store = FeedbackStore(paths.store_url(None))
    try:
        with store.engine.connect() as c:
            rows = c.execute(sa.select(predictions.c.input_shape, predictions.c.input_dtype, predictions.c.input_data)
                             .where(predictions.c.id.in_(ids))).all()
        return [np.asarray(_decode_input(*r), dtype=np.float32) for r in rows]
    finally:
        store.close()


def test_switch_off_retrains_on_feedback_alone(served, tmp_path):
    proj, paths = _copy(served, tmp_path, semi_supervised="off")
    proc = cli("retrain", proj, "--json", "--force")
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    version = json.loads(proc.stdout)["version"]
    manifest = open_registry(paths.registry).manifest(version)
    run_dir = _run_dir(paths, version)
    assert not (run_dir / "unlabelled_ids.json").exists()
    assert manifest["semi_supervised"] == {"mode": "off", "used": False,
                                           "reason": "feedback.semi_supervised is off"}
    trained = json.loads((run_dir / "feedback_ids.json").read_text())
    ds = served["ds"]
    # what today's retrain records: the dataset plus the trained feedback, nothing else
    assert manifest["dataset"]["fingerprint"] == trained_fingerprint(ds.fingerprint, trained)
    assert manifest["dataset"]["train_examples"] == len(ds.splits["train"][1]) + len(trained)
    assert "pseudo_label_rate" not in manifest["training"]
