"""One contract suite, run for every task and candidate kind on tiny real data.

For each (task, candidate): the featurizer fits on the training inputs and the network trains;
a registered artifact reloads and predicts exactly what the trained model predicted; an input
stored with a prediction comes back as the same training example; a request body parses into
inputs the model takes. The cases are every candidate of every task in the task registry.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modelloop.backends import FitJob, LocalBackend
from modelloop.data.builtin import load_builtin
from modelloop.data.text import load_rotten_tomatoes
from modelloop.feedback import FeedbackStore, prediction_row
from modelloop.registry import LocalRegistry
from modelloop.select.candidates import prepare_features
from modelloop.tasks import TASK_NAMES, get_task
from modelloop.train import TrainConfig

#: Tasks with a contract file of their own (recommendation and faq do not fit features in, class
#: probabilities out; see ``test_recommendation.py`` and ``test_faq.py``).
OWN_CONTRACT = {"recommendation", "faq"}

# Every candidate of every task, read from the registry, so a new one is covered the day it is added.
CASES = [(name, candidate) for name in TASK_NAMES if name not in OWN_CONTRACT
         for candidate in get_task(name).candidates]


class _Like:  # what collate needs of a dataset or model: the image format
    def __init__(self, fmt):
        self.fmt = fmt


@pytest.fixture(scope="module")
def tables():
    """96 breast-cancer rows with a categorical column and blank cells, as the loader makes them."""
    from modelloop.data.tabular import load_tabular_builtin

    t = load_tabular_builtin("breast-cancer")
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(t.rows))[:96]
    rows = []
    for i in idx:
        r = dict(t.rows[i])
        r["size"] = "large" if r["mean radius"] > 15 else "small"
        if rng.random() < 0.2:
            r["mean texture"] = None
        rows.append(r)
    names = sorted(set(t.labels))
    d = load_tabular_builtin("diabetes", numeric_target=True)  # regression: float targets, one output
    ridx = rng.permutation(len(d.rows))[:96]
    reg = ([d.rows[i] for i in ridx], torch.tensor([d.labels[i] for i in ridx], dtype=torch.float32), ["target"], None)
    return {"tabular-classification": (rows, torch.tensor([names.index(t.labels[i]) for i in idx]), names, None),
            "tabular-regression": reg}


@pytest.fixture(scope="module")
def data(tables):
    b = load_builtin("seed-case")
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(b.y))[:96]
    images = (torch.from_numpy(b.x[idx]), torch.from_numpy(b.y[idx]), b.class_names, b.fmt)
    t = load_rotten_tomatoes()
    names = sorted(set(t.labels))
    texts = (t.texts[:96], torch.tensor([names.index(v) for v in t.labels[:96]]), names, None)
    return {"image-classification": images, "text-classification": texts, **tables}


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    """36 spoken keywords (3 words x 2 voices x 2 speeds x 3 pitches) from the keyword generator."""
    from modelloop.data.audio import load_audio_folder
    from modelloop.data.keywords import make_keywords

    root = tmp_path_factory.mktemp("keywords")
    make_keywords(root, ["yes", "no", "up"], ["en-us", "en-gb"], [150, 200], [35, 50, 65])
    f = load_audio_folder(root)
    idx = np.random.default_rng(0).permutation(len(f.y))
    return torch.from_numpy(f.x[idx]), torch.from_numpy(f.y[idx]), f.class_names, None


@pytest.mark.parametrize(("task_name", "candidate"), CASES)
def test_task_contract(task_name, candidate, data, tmp_path, request):
    task = get_task(task_name)
    x, y, names, fmt = request.getfixturevalue("audio") if task_name == "audio-classification" else data[task_name]
    n_train = len(y) * 2 // 3
    cand = task.candidates[candidate]
    cand = type(cand)(**{**cand.__dict__, "featurizer": {**cand.featurizer, **(
        {"image_size": 64} if cand.featurizer["kind"] == "efficientnet" else {})}})
    xtr, ytr = (x[:n_train], y[:n_train])
    xte = x[n_train:]

    # fit: featurizer on the training inputs only, then the network
    feat, ftr, fva = prepare_features(cand, xtr, xte, tmp_path / "cache")
    config = {"family": cand.family, "input_shape": list(ftr.shape[1:]), "num_classes": len(names),
              "params": {"lr": 3e-3, "weight_decay": 1e-4}, "featurizer": dict(cand.featurizer),
              "candidate": cand.name}
    regression = task.problem == "regression"
    if regression:
        config["target"] = {"mean": float(ytr.mean()), "std": float(ytr.std())}
    # The backend fits a network by gradient steps with the task's loss and a model that fits
    # itself (ridge, boosted trees) by its own algorithm. The contract is about plumbing (fit,
    # save, reload, parse), not accuracy: one epoch will do.
    model = LocalBackend().fit(FitJob(config, (ftr, ytr), (fva, y[n_train:]),
                                      training=TrainConfig(max_epochs=1, batch_size=32), seed=0, task=task)).model
    model.eval()
    with torch.inference_mode():
        out = model(feat.transform(xte))
        expected = out.float() if regression else torch.softmax(out, 1)
    assert expected.shape == (len(xte), len(names))

    # save/load round trip: the artifact predicts what the trained model predicted
    reg = LocalRegistry(tmp_path / "registry")
    pre = {"featurizer": feat.config(), "class_names": names, "input": task.input_kind}
    if fmt is not None:
        pre["format"] = fmt.to_dict()
    version = reg.register({"task": task_name, "model": config, "class_names": names}, model, pre)
    loaded = reg.load(version, backend="torch")
    got = loaded.predict_proba(xte)
    assert torch.allclose(got, expected, atol=1e-5)

    # feedback-to-example: an input stored with its prediction comes back as the same example
    store = FeedbackStore(f"sqlite:///{tmp_path / 'fb.db'}")
    item = xte[0] if isinstance(xte, list) else xte[0].numpy()
    row = prediction_row("p1", version, item, names[0], {n: 0.5 for n in names}, 1.0)
    store.log_many([row])
    truth = "123.5" if regression else names[1]  # regression feedback: the true value
    store.add_feedback("p1", truth)
    items, labels, ids = store.labelled_inputs(names)
    back, usable = task.collate(items, _Like(fmt))
    assert usable == [True] and labels == [truth] and ids == ["p1"]
    assert torch.allclose(loaded.predict_proba(back), got[:1], atol=1e-5)
    store.close()

    # serving: a request body parses into inputs the model takes
    if task.input_kind == "audio":
        # Samples go through the decoding steps again (the VAD may cut a 32 ms window differently
        # from an already trimmed clip), so check the form, not bit-equality.
        parsed, as_list = task.parse_json({"samples": xte[0].reshape(-1).tolist(), "sample_rate": 16000}, loaded)
        assert not as_list and parsed.shape == tuple(xte[:1].shape) and parsed.dtype == np.float32
        assert loaded.predict_proba(parsed).shape == (1, len(names))
        return
    body = ({"text": xte[0]} if task.input_kind == "text" else {"row": xte[0]} if task.input_kind == "tabular"
            else {"pixels": xte[0].reshape(-1).tolist()})
    parsed, as_list = task.parse_json(body, loaded)
    assert not as_list
    assert torch.allclose(loaded.predict_proba(parsed), got[:1], atol=1e-5)


def test_every_task_is_under_a_contract():
    """Each task either brings cases here (at least one candidate) or has its own contract file."""
    from pathlib import Path

    covered = {t for t, _ in CASES}
    for name in TASK_NAMES:
        if name in OWN_CONTRACT:
            assert (Path(__file__).parent / f"test_{name.replace('-', '_')}.py").is_file(), name
        else:
            assert name in covered, f"{name}: no candidates, so no contract case"
    assert len(CASES) == len(set(CASES))


def test_image_task_considers_transfer_where_it_pays(tmp_path):
    """Few examples per class (or colour photos): EfficientNet joins the candidates, with the reason."""
    from modelloop.data.dataset import DataReport, Dataset
    from modelloop.data.image import ImageFormat
    from modelloop.spec import parse_spec

    task = get_task("image-classification")
    spec = parse_spec({"data": {"source": "builtin:seed-case"}})

    def ds(per_class: int, channels: int = 1):
        rep = DataReport(source="x", split_counts={"train": {"a": per_class, "b": per_class}})
        return Dataset({}, ["a", "b"], ImageFormat(channels, 28, 28), rep, "f")

    few, why = task.choose_candidates(spec, ds(10))
    assert "efficientnet" in [c.name for c in few] and "10 training images" in why["efficientnet"]
    many, why = task.choose_candidates(spec, ds(500))
    assert "efficientnet" not in [c.name for c in many] and "not considered" in why["efficientnet"]
    colour, why = task.choose_candidates(spec, ds(500, channels=3))
    assert "efficientnet" in [c.name for c in colour] and "colour" in why["efficientnet"]
