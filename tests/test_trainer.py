"""Trainer: the fast path (precision, threads, channels_last, device) must not change results
beyond stated tolerances; soft targets; integer inputs; resume; what fit hands back."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modelloop.data.builtin import load_builtin
from modelloop.data.transforms import Normalizer
from modelloop.errors import ModelloopError
from modelloop.models import batched_logits, build_model
from modelloop.train import fast
from modelloop.train.trainer import TrainConfig, Trainer, TrainResult, describe, soft_cross_entropy

# Stated tolerances.
ACC_TOL = 0.05  # final val accuracy of a variant vs fp32/NCHW on the 100 seed-case test images (5 images)
FORWARD_ATOL = 1e-5  # logits of the same weights: channels_last vs NCHW, 1 vs 2 threads
# channels_last vs NCHW gradients of one training step, relative to the largest entry. Not 1e-5: torch's
# CPU BatchNorm in training mode accumulates channels_last batch statistics less exactly (~1e-4 relative
# on these digits, against ~1e-7 for NCHW; measured against float64), and four conv/BN layers of
# backprop grow that to ~5e-3. Eval mode (running statistics) is exact to rounding, hence FORWARD_ATOL.
GRAD_RTOL = 2e-2
# Why whole runs are compared by accuracy and not by logits: identical settings give identical runs,
# but Adam's first steps move each weight by ~lr whatever its gradient's size, so a rounding-level
# difference in a near-zero gradient flips that weight's step (a 2*lr weight difference, measured);
# after ten steps the logits of two such runs differ by 5e-3 to 6e-2, after two steps by < 1e-2.
TWO_STEP_ATOL = 1e-2


@pytest.fixture(autouse=True)
def _own_plan_cache(tmp_path, monkeypatch):
    """Each test measures for itself: plans cached on disk by other runs on this machine are not read."""
    monkeypatch.setenv("MODELLOOP_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def seed_case():
    b = load_builtin("seed-case")
    x, y = torch.from_numpy(b.x), torch.from_numpy(b.y)
    tr, te = b.fixed_split["train"], b.fixed_split["test"]
    norm = Normalizer().fit(x[tr])
    return (norm.transform(x[tr]), y[tr]), (norm.transform(x[te]), y[te])


def cnn(width: int = 8, classes: int = 2) -> nn.Module:
    torch.manual_seed(0)
    return build_model({"family": "cnn", "input_shape": [1, 28, 28], "num_classes": classes,
                        "params": {"width": width}})


def linear(classes: int = 2) -> nn.Module:
    torch.manual_seed(0)
    return build_model({"family": "linear", "input_shape": [1, 28, 28], "num_classes": classes})


def _fit_seed_case(seed_case, precision: str, channels_last: bool) -> float:
    train, val = seed_case
    cfg = TrainConfig(max_epochs=3, batch_size=64, threads=1, seed=0, precision=precision, channels_last=channels_last)
    r = Trainer(cfg).fit(cnn(), train, val)
    assert (r.precision, r.channels_last, r.plan_source) == (precision, channels_last, "config")
    return r.best_val_score


@pytest.fixture(scope="module")
def reference_accuracy(seed_case) -> float:
    acc = _fit_seed_case(seed_case, "fp32", False)
    assert acc > 0.85
    return acc


@pytest.mark.parametrize(("precision", "channels_last"), [("fp32", True), ("bf16", True)])
def test_precision_and_layout_keep_accuracy(seed_case, reference_accuracy, precision, channels_last):
    acc = _fit_seed_case(seed_case, precision, channels_last)
    assert abs(acc - reference_accuracy) <= ACC_TOL, (acc, reference_accuracy)


def test_channels_last_same_logits_and_gradients(seed_case):
    (x, y), (xv, _) = seed_case
    model = cnn(width=8)
    ref = batched_logits(model, xv)
    nhwc = copy.deepcopy(model).to(memory_format=torch.channels_last)
    out = batched_logits(nhwc, xv.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(out, ref, atol=FORWARD_ATOL, rtol=0)

    # Gradients of one training step (BatchNorm on batch statistics, same dropout masks): see GRAD_RTOL.
    grads = {}
    for cl in (False, True):
        m = copy.deepcopy(model).train()
        xb = x[:64]
        if cl:
            m, xb = m.to(memory_format=torch.channels_last), xb.contiguous(memory_format=torch.channels_last)
        torch.manual_seed(1)
        F.cross_entropy(m(xb), y[:64]).backward()
        grads[cl] = [p.grad.contiguous() for p in m.parameters()]
    for g0, g1 in zip(grads[False], grads[True], strict=True):
        assert (g0 - g1).abs().max() <= GRAD_RTOL * g0.abs().max()


def test_thread_count_same_results_and_restored(seed_case):
    (x, y), (xv, yv) = seed_case
    before = torch.get_num_threads()
    forward, trained = {}, {}
    fixed = cnn(width=4)
    for threads in (1, 2):
        m = cnn(width=4)
        r = Trainer(TrainConfig(max_epochs=1, batch_size=64, precision="fp32", threads=threads)).fit(
            m, (x[:128], y[:128]), (xv, yv))
        assert r.threads == threads
        assert torch.get_num_threads() == before
        trained[threads] = batched_logits(m, xv)
        torch.set_num_threads(threads)
        try:
            forward[threads] = batched_logits(fixed, xv)
        finally:
            torch.set_num_threads(before)
    assert torch.allclose(forward[1], forward[2], atol=FORWARD_ATOL, rtol=0)
    assert torch.allclose(trained[1], trained[2], atol=TWO_STEP_ATOL, rtol=0)  # two steps: see TWO_STEP_ATOL


def test_soft_cross_entropy_equals_hard_for_one_hot():
    torch.manual_seed(0)
    logits, y = torch.randn(32, 5), torch.randint(0, 5, (32,))
    onehot = F.one_hot(y, 5).float()
    assert torch.allclose(soft_cross_entropy(logits, onehot), F.cross_entropy(logits, y), atol=1e-6)


def test_one_hot_soft_targets_train_like_hard_labels(seed_case):
    (x, y), val = seed_case
    x, y = x[:200], y[:200]
    results, models = [], []
    for target in (y, F.one_hot(y, 2).float()):
        m = linear()
        results.append(Trainer(TrainConfig(max_epochs=3, batch_size=32, precision="fp32", threads=1)).fit(
            m, (x, target), val))
        models.append(m)
    hard, soft = results
    assert [h["train_loss"] for h in hard.history] == pytest.approx([h["train_loss"] for h in soft.history],
                                                                    abs=1e-6)
    assert hard.best_val_score == soft.best_val_score
    for k in hard.best_state:
        assert torch.allclose(hard.best_state[k], soft.best_state[k], atol=1e-6)


def test_soft_targets_from_a_teacher_train(seed_case):
    (x, y), val = seed_case
    probs = torch.full((len(y), 2), 0.05)
    probs[torch.arange(len(y)), y] = 0.95  # a confident teacher
    r = Trainer(TrainConfig(max_epochs=3, batch_size=64, precision="fp32", threads=1)).fit(linear(), (x, probs), val)
    assert r.best_val_score > 0.75


class TokenModel(nn.Module):
    """Token ids (N, 2, L) int64 -> logits (N, K); fails loudly if the ids were cast to float."""

    def __init__(self, vocab: int = 50, classes: int = 2) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, 8)
        self.fc = nn.Linear(8, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        assert ids.dtype == torch.int64 and ids.dim() == 3
        return self.fc(self.emb(ids[:, 0]).mean(1))  # (N, L, 8) -> (N, 8) -> (N, K)


def test_integer_inputs_are_not_cast_or_shifted():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (96, 2, 7), generator=g)
    y = ((ids[:, 0] < 25).sum(1) > 3).long()  # mostly low token ids: visible in the mean embedding
    r = Trainer(TrainConfig(max_epochs=15, batch_size=16, lr=0.05, shift=2, threads=1)).fit(
        TokenModel(), (ids, y), (ids, y))
    assert not r.channels_last
    assert r.best_val_score > 0.8


def test_probe_measures_and_matches_a_forced_run(seed_case, monkeypatch):
    # Two thread counts to choose from on any machine (one core, or no native bf16, would leave
    # a single plan and nothing to probe): the rule under test is the probe's, not this CPU's.
    monkeypatch.setattr(fast, "available_cores", lambda: 2)
    (x, y), val = seed_case
    x, y = x[:256], y[:256]
    fast.clear_plan_cache()
    rng = torch.get_rng_state()
    cfg = dict(max_epochs=7, batch_size=16)  # 16 steps x 7 epochs: enough work to be worth probing
    auto = Trainer(TrainConfig(**cfg)).fit(linear(), (x, y), val)
    assert auto.plan_source == "probe"
    assert auto.probe and all(v > 0 for v in auto.probe.values())
    assert f"fp32/{auto.threads}t" in auto.probe or f"bf16/{auto.threads}t" in auto.probe
    # The probe neither trains the model nor consumes random numbers: forcing its choice gives the same run.
    torch.set_rng_state(rng)
    forced = Trainer(TrainConfig(**cfg, precision=auto.precision, threads=auto.threads)).fit(linear(), (x, y), val)
    assert forced.plan_source == "config"
    for k in auto.best_state:
        assert torch.equal(auto.best_state[k], forced.best_state[k])
    again = Trainer(TrainConfig(**cfg)).fit(linear(), (x, y), val)
    assert again.plan_source == "cache" and (again.precision, again.threads) == (auto.precision, auto.threads)


def test_plan_cached_on_disk_for_a_later_process(seed_case, monkeypatch):
    # A later process (here: the memory cache emptied) on the same machine reuses the plan from disk;
    # when the load average has moved past the tolerance, or on another machine, it measures again.
    monkeypatch.setattr(fast, "available_cores", lambda: 2)
    monkeypatch.setattr(fast, "_load_now", lambda: 1.0)
    (x, y), val = seed_case
    x, y = x[:256], y[:256]
    cfg = TrainConfig(max_epochs=7, batch_size=16)
    first = Trainer(cfg).fit(linear(), (x, y), val)
    assert first.plan_source == "probe" and fast._plan_cache().path.is_file()
    fast._plan_cache().clear()  # what a new process starts with
    later = Trainer(cfg).fit(linear(), (x, y), val)
    assert later.plan_source == "cache" and (later.precision, later.threads) == (first.precision, first.threads)
    assert later.probe == first.probe
    fast._plan_cache().clear()
    monkeypatch.setattr(fast, "_load_now", lambda: 1.0 + fast.load_tolerance() + 0.5)  # other jobs arrived
    assert Trainer(cfg).fit(linear(), (x, y), val).plan_source == "probe"
    fast._plan_cache().clear()
    monkeypatch.setattr(fast, "machine_key", lambda: "another CPU x2")
    assert Trainer(cfg).fit(linear(), (x, y), val).plan_source == "probe"
    fast.clear_plan_cache()
    assert not fast._plan_cache().path.exists()


def test_unreadable_plan_cache_only_costs_a_probe(seed_case, monkeypatch):
    monkeypatch.setattr(fast, "available_cores", lambda: 2)
    path = fast._plan_cache().path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    (x, y), val = seed_case
    r = Trainer(TrainConfig(max_epochs=7, batch_size=16)).fit(linear(), (x[:256], y[:256]), val)
    assert r.plan_source == "probe"


def test_fit_reports_where_its_time_went(seed_case, tmp_path):
    (x, y), val = seed_case
    r = Trainer(TrainConfig(max_epochs=2, threads=1, checkpoint_path=tmp_path / "c.pt")).fit(
        cnn(), (x[:128], y[:128]), val)
    parts = ("setup", "probe", "steps", "validation", "state_copies", "checkpoint")
    assert set(r.timings) == {*parts, "total"}
    assert all(r.timings[k] >= 0 for k in r.timings) and r.timings["steps"] > 0 and r.timings["checkpoint"] > 0


def test_resume_continues_identically(seed_case, tmp_path):
    (x, y), val = seed_case
    x, y = x[:200], y[:200]
    cfg = dict(max_epochs=4, batch_size=32, precision="fp32", threads=1, shift=1)
    straight = Trainer(TrainConfig(**cfg)).fit(cnn(width=4), (x, y), val)

    class Stop(Exception):
        pass

    def stop_after_two(epoch: int, row: dict) -> None:
        if epoch == 1:
            raise Stop

    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(Stop):
        Trainer(TrainConfig(**cfg, checkpoint_path=ckpt)).fit(cnn(width=4), (x, y), val, on_epoch=stop_after_two)
    resumed = Trainer(TrainConfig(**cfg, checkpoint_path=ckpt)).fit(cnn(width=4), (x, y), val, resume=True)
    assert resumed.plan_source == "checkpoint"
    assert [h["val_accuracy"] for h in resumed.history] == [h["val_accuracy"] for h in straight.history]
    for k in straight.best_state:
        assert torch.allclose(straight.best_state[k], resumed.best_state[k], atol=1e-6)


def test_fit_hands_back_cpu_contiguous_weights(seed_case, tmp_path):
    from safetensors.torch import save_file

    (x, y), val = seed_case
    model = cnn(width=4)
    r = Trainer(TrainConfig(max_epochs=1, channels_last=True, threads=1)).fit(model, (x[:128], y[:128]), val)
    assert r.channels_last and r.device == "cpu"
    for t in list(r.best_state.values()) + list(model.state_dict().values()):
        assert t.device.type == "cpu" and t.is_contiguous()
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))  # refuses non-contiguous tensors


@pytest.mark.parametrize("native_bf16", [True, False], ids=["cpu-with-bf16", "cpu-without-bf16"])
def test_describe_and_result_stay_compatible(seed_case, monkeypatch, native_bf16):
    # The rule, on either kind of CPU: with the thread count forced, a CPU without native bf16 has
    # one plan (fp32) and nothing to choose ("config"); with native bf16 there are two, and a run
    # this short is too little work to probe them ("default", which keeps fp32).
    monkeypatch.setattr(fast, "cpu_has_native_bf16", lambda: native_bf16)
    (x, y), val = seed_case
    r = Trainer(TrainConfig(max_epochs=1, threads=1)).fit(linear(), (x[:64], y[:64]), val)
    d = describe(r)
    for key in ("best_epoch", "best_val_accuracy", "best_val_score", "score_name", "epochs_run", "stopped", "seconds",
                "device", "precision", "threads", "channels_last", "plan"):
        assert key in d
    assert d["precision"] == "fp32" and d["plan"] == ("default" if native_bf16 else "config")
    old_style = TrainResult({}, 1, 0.5, [], "max_epochs", 1.0)  # positional construction still works
    assert describe(old_style)["device"] == "cpu"


@pytest.mark.parametrize("kwargs", [{"precision": "fp8"}, {"device": "tpu"}, {"threads": 0},
                                    {"precision": "fp16", "device": "cpu"}])
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError, match="TrainConfig"):
        TrainConfig(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without a GPU")
def test_cuda_requested_without_gpu():
    with pytest.raises(ModelloopError, match="cuda"):
        Trainer(TrainConfig(device="cuda")).fit(linear(), (torch.zeros(4, 1, 28, 28), torch.zeros(4).long()),
                                                (torch.zeros(2, 1, 28, 28), torch.zeros(2).long()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp32"])
def test_cuda_fit(seed_case, precision):
    train, val = seed_case
    model = cnn()
    r = Trainer(TrainConfig(max_epochs=3, device="cuda", precision=precision)).fit(model, train, val)
    assert r.device.startswith("cuda") and r.precision == precision
    assert all(t.device.type == "cpu" for t in r.best_state.values())
    assert next(model.parameters()).device.type == "cpu"
    assert r.best_val_score > 0.8

