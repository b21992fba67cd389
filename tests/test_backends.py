"""The execution seam: a backend fits candidates and runs search trials; the trainer takes its loss
from the task; models that fit themselves say so through a protocol."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from modelloop.backends import Backend, FitJob, LocalBackend, RayBackend, SearchJob, get_backend, task_score
from modelloop.data.tabular import load_tabular_builtin
from modelloop.errors import SpecError
from modelloop.models import PRETRAINED_FAMILIES, FitsItself, MLPNet, Regressor, build_model, one_trial
from modelloop.models.trees import HGBNet
from modelloop.spec import Spec
from modelloop.tasks import get_task
from modelloop.tasks.tabular_features import TabularFeaturizer
from modelloop.train import TrainConfig, Trainer
from modelloop.train.trainer import TrainResult, cross_entropy, describe


@pytest.fixture(scope="module")
def cancer():
    """Breast-cancer rows featurized (300 train, 100 validation), labels as class indices."""
    t = load_tabular_builtin("breast-cancer")
    classes = sorted(set(t.labels))
    y = torch.tensor([classes.index(v) for v in t.labels])
    feat = TabularFeaturizer().fit(t.rows[:300])
    return (feat.transform(t.rows[:300]), y[:300]), (feat.transform(t.rows[300:400]), y[300:400])


@pytest.fixture(scope="module")
def diabetes():
    """Diabetes rows featurized (300 train, 100 validation), the target as float values."""
    t = load_tabular_builtin("diabetes", numeric_target=True)
    y = torch.tensor([float(v) for v in t.labels])
    feat = TabularFeaturizer().fit(t.rows[:300])
    return (feat.transform(t.rows[:300]), y[:300]), (feat.transform(t.rows[300:400]), y[300:400])


def _config(family: str, train, num_classes: int, params: dict, target: dict | None = None) -> dict:
    config = {"family": family, "input_shape": list(train[0].shape[1:]), "num_classes": num_classes,
              "params": params}
    if target:
        config["target"] = target
    return config


def _target(y: torch.Tensor) -> dict[str, float]:
    return {"mean": float(y.double().mean()), "std": float(y.double().std())}


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


TRAINING = TrainConfig(max_epochs=4, patience=2, batch_size=32, precision="fp32", threads=1)


@pytest.mark.parametrize("problem", ["classification", "regression"])
def test_network_fit_equals_a_direct_trainer_run(problem, cancer, diabetes):
    # The backend builds the model after seeding, takes lr and weight decay from the candidate's
    # params and trains with the task's loss: exactly what a hand-made Trainer run does.
    task = get_task("tabular-regression" if problem == "regression" else "tabular-classification")
    train, val = diabetes if problem == "regression" else cancer
    target = _target(train[1]) if problem == "regression" else None
    params = {"hidden": 32, "dropout": 0.1, "lr": 3e-3, "weight_decay": 1e-4}
    config = _config("mlp", train, 2, params, target)
    started = []
    fit = LocalBackend().fit(FitJob(config, train, val, training=TRAINING, seed=7, task=task,
                                    on_start=lambda model, method: started.append(method)))

    torch.manual_seed(7)
    model = build_model(config)
    score = "r2" if problem == "regression" else "accuracy"
    cfg = TrainConfig(max_epochs=4, patience=2, batch_size=32, precision="fp32", threads=1, lr=3e-3,
                      weight_decay=1e-4, seed=7)
    direct = Trainer(cfg, loss=task.loss, score=score).fit(model, train, val)

    assert started == ["trainer"] and fit.method == "trainer"
    assert fit.history == direct.history and fit.best_val_score == direct.best_val_score
    assert fit.score_name == direct.score_name == score
    assert _same_weights(fit.result.best_state, direct.best_state)
    assert _same_weights(fit.model.state_dict(), model.state_dict())
    if problem == "classification":  # the trainer's own default is the classification loss
        torch.manual_seed(7)
        assert Trainer(cfg).fit(build_model(config), train, val).history == direct.history


@pytest.mark.parametrize(("family", "problem"), [("linear", "regression"), ("hgb", "regression"),
                                                 ("hgb", "classification")])
def test_self_fitting_model_fits_itself_with_the_same_result(family, problem, cancer, diabetes):
    train, val = diabetes if problem == "regression" else cancer
    target = _target(train[1]) if problem == "regression" else None
    params = {"max_iter": 50} if family == "hgb" else {"lr": 3e-3, "weight_decay": 1e-4}
    config = _config(family, train, 2, params, target)
    task = get_task(f"tabular-{problem}")
    started = []
    fit = LocalBackend().fit(FitJob(config, train, val, training=TRAINING, seed=3, task=task,
                                    on_start=lambda model, method: started.append(method)))

    model = build_model(config)
    direct = model.fit_direct(train, val, params, 3)

    assert isinstance(fit.model, FitsItself) and started == ["itself"] and fit.method == "itself"
    assert fit.result.stopped == "fitted" and fit.result.best_epoch == 1
    assert fit.best_val_score == direct["best_val_score"] and fit.history == direct["history"]
    assert fit.score_name == direct["score_name"] == ("r2" if problem == "regression" else "accuracy")
    assert set(fit.details) == ({"alpha"} if family == "linear" else {"rounds"})
    assert _same_weights(fit.model.state_dict(), model.state_dict())


def test_models_that_fit_themselves_declare_the_protocol():
    ridge = build_model({"family": "linear", "input_shape": [4], "num_classes": 1, "params": {},
                         "target": {"mean": 0.0, "std": 1.0}})
    assert isinstance(ridge, FitsItself)
    assert isinstance(HGBNet((4,), 3), FitsItself) and isinstance(HGBNet((4,), 1, regression=True), FitsItself)
    assert not isinstance(MLPNet((4,), 3), FitsItself)
    assert not isinstance(Regressor(MLPNet((4,), 1), 0.0, 1.0), FitsItself)  # an MLP regressor trains by steps


def test_pretrained_families_get_one_trial_and_others_are_searched():
    assert all(one_trial(f) for f in PRETRAINED_FAMILIES)
    assert not any(one_trial(f) for f in ("linear", "mlp", "cnn", "ds-cnn", "hgb"))


def test_get_backend_names_the_field_and_the_known_backends():
    assert isinstance(get_backend(), LocalBackend) and isinstance(get_backend("local"), LocalBackend)
    assert isinstance(get_backend(Spec(task="tabular-classification", data={"source": "builtin:wine"})), LocalBackend)
    mine = LocalBackend()
    assert get_backend(mine) is mine and isinstance(mine, Backend)
    with pytest.raises(SpecError, match=r"compute.backend: received 'spark'; expected one of 'local', 'ray'"):
        get_backend("spark")
    on_ray = Spec(task="tabular-classification", data={"source": "builtin:wine"},
                  compute={"backend": "ray", "address": "10.0.0.5:6379", "workers": 4, "cpus_per_worker": 2})
    ray = get_backend(on_ray, storage="/tmp/somewhere")
    assert isinstance(ray, RayBackend) and ray.compute.workers == 4 and ray.storage == "/tmp/somewhere"
    assert get_backend(on_ray.model_copy(update={"compute": on_ray.compute.model_copy(
        update={"storage": "s3://bucket/runs"})})).storage == "s3://bucket/runs"


def test_compute_section_is_checked_at_load():
    for bad, field in (({"backend": "spark"}, "backend"), ({"workers": 0}, "workers"),
                       ({"cpus_per_worker": 0}, "cpus_per_worker"), ({"gpus_per_worker": -1}, "gpus_per_worker"),
                       ({"max_failures": -1}, "max_failures"), ({"nodes": 3}, "nodes")):
        with pytest.raises(ValidationError, match=field):
            Spec(task="image-classification", data={"source": "builtin:seed-case"}, compute=bad)


def test_task_says_its_loss_and_score():
    torch.manual_seed(0)
    reg, cls = get_task("tabular-regression"), get_task("tabular-classification")
    outputs, values = torch.randn(8, 1), torch.randn(8)
    assert torch.equal(reg.loss(outputs, values), F.mse_loss(outputs[:, 0], values))
    logits, labels = torch.randn(8, 3), torch.randint(0, 3, (8,))
    assert torch.equal(cls.loss(logits, labels), F.cross_entropy(logits, labels))
    one_hot = F.one_hot(labels, 3).float()  # soft targets (a teacher's): the same cross-entropy
    assert torch.allclose(cls.loss(logits, one_hot), F.cross_entropy(logits, labels), atol=1e-6)
    assert task_score(reg) == "r2" and task_score(cls) == task_score(None) == "accuracy"


def test_trainer_minimizes_the_loss_it_is_given():
    torch.manual_seed(0)
    x = torch.randn(64, 3)
    values = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(64)
    seen = []

    def loss(outputs, targets):
        seen.append(targets.dtype)
        return F.mse_loss(outputs.float()[:, 0], targets.float())

    cfg = TrainConfig(max_epochs=30, batch_size=16, lr=0.05, precision="fp32", threads=1)
    model = torch.nn.Linear(3, 1)
    r = Trainer(cfg, loss=loss, score="r2").fit(model, (x, values), (x, values))
    assert seen and set(seen) == {torch.float32}
    assert r.score_name == "r2" and r.best_val_score > 0.9
    best = r.history[r.best_epoch - 1]  # with score "r2" the validation loss is the squared error
    with torch.inference_mode():
        assert best["val_loss"] == pytest.approx(float(((model(x)[:, 0] - values) ** 2).mean()), rel=1e-5)
    # Without a loss the trainer does not guess a regression from float targets: it uses cross-entropy.
    assert Trainer(cfg).loss is cross_entropy and Trainer(cfg).score == "accuracy"
    with pytest.raises(ValueError, match=r"score: received 'f1'"):
        Trainer(cfg, score="f1")


def test_result_keeps_the_former_score_name_readable():
    r = TrainResult({}, 1, 0.25, [], "fitted", 0.1, score_name="r2")
    assert r.best_val_accuracy == r.best_val_score == 0.25
    d = describe(r)
    assert d["best_val_score"] == d["best_val_accuracy"] == 0.25 and d["score_name"] == "r2"


def test_search_runs_first_trials_prunes_and_resumes(tmp_path):
    def objective(trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        # trial 0 (x = 0.9) sets the median; a later trial far below it is pruned at step 1
        for step in range(3):
            trial.report(x, step)
        return x

    job = SearchJob(objective, n_trials=3, timeout_s=60, seed=0, study_name="s", storage_path=tmp_path / "s.db",
                    first_trials=[{"x": 0.9}, {"x": 0.01}], startup_trials=1, warmup_steps=1)
    out = LocalBackend().search(job)
    assert len(out.trials) == 3
    by_number = {t.number: t for t in out.trials}
    assert by_number[0].params == {"x": 0.9} and by_number[0].state == "complete"
    assert by_number[1].params == {"x": 0.01} and by_number[1].state == "pruned"
    assert by_number[1].value == pytest.approx(0.01)  # a pruned trial: its best reported value
    complete = [t for t in out.trials if t.state == "complete"]
    assert out.trials[: len(complete)] == complete  # complete ones first, best first
    assert [t.value for t in complete] == sorted((t.value for t in complete), reverse=True)
    assert out.best is complete[0]
    # Resumed: the finished trials count, so only the missing ones run.
    assert len(LocalBackend().search(job).trials) == 3
    job.n_trials = 4
    assert len(LocalBackend().search(job).trials) == 4


class _Recording(LocalBackend):
    """The local backend, recording what it was asked to fit (the fits themselves are real)."""

    name = "recording"

    def __init__(self) -> None:
        self.fits: list[str] = []

    def fit(self, job: FitJob):
        self.fits.append(job.model_config.get("candidate", job.model_config["family"]))
        return super().fit(job)

    def fit_with(self, fit, *args):
        self.fits.append(args[0]["kind"])
        return super().fit_with(fit, *args)


@pytest.mark.parametrize("task", ["tabular-classification", "recommendation"])
def test_every_fit_of_a_run_and_a_retrain_goes_through_the_loops_backend(task, tmp_path):
    """The search trials, the final fit, a recommender's fits and a challenger's: all through the
    one backend the loop holds (the seam a distributed backend replaces)."""
    from modelloop.loop import Loop
    from tests.e2e.tiny_projects import build

    proj = build(task, tmp_path)
    loop = Loop(proj)
    loop.backend = _Recording()
    loop.run()
    assert loop.backend.fits  # every candidate fit of this run went through it
    expected = {"linear"} if task == "tabular-classification" else {"popularity"}
    assert set(loop.backend.fits) == expected
    before = len(loop.backend.fits)
    loop.retrain(force=True)
    assert len(loop.backend.fits) == before + 1  # the challenger
