"""The task registry: built-in tasks, tasks registered in code, and tasks other packages provide
through the ``modelloop.tasks`` entry-point group (a real distribution on ``sys.path``)."""

from __future__ import annotations

import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelloop.errors import SpecError
from modelloop.spec import DataSpec, Requirements, SelectionSpec, Spec
from modelloop.tasks import (
    ENTRY_POINT_GROUP,
    TASK_NAMES,
    Candidate,
    Task,
    check_spec,
    get_task,
    register_task,
    task_names,
)
from modelloop.tasks import base as registry
from modelloop.tasks.supervised import SupervisedTask


class EchoTask(SupervisedTask):
    """A task made for these tests: two candidates, regression metrics."""

    name = "echo-test"
    input_kind = "tabular"
    problem = "regression"
    candidates = {"small": Candidate("small", "linear", {"kind": "tabular"}),
                  "large": Candidate("large", "mlp", {"kind": "tabular"})}
    default_candidates = ("small",)
    metric_kind = "regression"
    metrics = ("rmse", "mae")
    default_metric = "rmse"

    def prepare(self, data: DataSpec, base_dir: Path):
        raise NotImplementedError

    def candidates_for(self, ds) -> tuple[list[str], dict[str, str]]:
        return ["small"], {"large": "not needed"}

    def collate(self, items: list[Any], like) -> tuple[Any, list[bool]]:
        return items, [True] * len(items)

    def parse_json(self, body: Any, model, limits=None) -> tuple[Any, bool]:
        return [body], False


@pytest.fixture(autouse=True)
def _own_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no registered task and leaves none behind."""
    monkeypatch.setattr(registry, "_REGISTERED", {})


# -- built-in and registered tasks ----------------------------------------------------------------


def test_built_in_tasks_are_known_and_made_on_request() -> None:
    assert set(TASK_NAMES) <= set(task_names())
    for name in TASK_NAMES:
        assert get_task(name).name == name


def test_a_task_class_registered_here_is_found_by_name() -> None:
    assert "echo-test" not in task_names()
    register_task("echo-test", EchoTask)
    assert "echo-test" in task_names()
    task = get_task("echo-test")
    assert isinstance(task, EchoTask)
    assert get_task("echo-test") is not task  # a fresh task each time, like the built-in ones


def test_a_registered_task_checks_the_spec_with_what_it_knows() -> None:
    register_task("echo-test", EchoTask)
    spec = Spec(task="echo-test", data=DataSpec(source="x"))
    check_spec(spec)
    assert (spec.requirements.metric, spec.requirements.target) == ("rmse", None)  # the task's default; no target

    spec = Spec(task="echo-test", data=DataSpec(source="x"), selection=SelectionSpec(candidates=["huge"]))
    with pytest.raises(SpecError) as exc:
        check_spec(spec, where="proj/modelloop.yaml")
    msg = str(exc.value)
    assert msg.startswith("proj/modelloop.yaml: field 'selection.candidates'")
    assert "received 'huge'" in msg and "not a candidate for echo-test" in msg
    assert "expected some of small, large" in msg

    spec = Spec(task="echo-test", data=DataSpec(source="x"), requirements=Requirements(metric="r2", target=0.5))
    with pytest.raises(SpecError, match=r"field 'requirements.metric': received 'r2', which is not a regression "
                                        r"metric for echo-test; expected one of rmse, mae"):
        check_spec(spec)


def test_a_factory_function_is_a_task_too() -> None:
    register_task("echo-test", lambda: EchoTask())
    assert isinstance(get_task("echo-test"), EchoTask)


def test_taken_and_empty_names_are_refused() -> None:
    with pytest.raises(ValueError, match=r"task 'image-classification': a built-in task has this name"):
        register_task("image-classification", EchoTask)
    register_task("echo-test", EchoTask)
    with pytest.raises(ValueError, match=r"task 'echo-test': already registered \(registered factory EchoTask\)"):
        register_task("echo-test", EchoTask)
    register_task("echo-test", lambda: EchoTask(), replace=True)
    with pytest.raises(ValueError, match="task name: received ' '; expected a non-empty string"):
        register_task(" ", EchoTask)
    with pytest.raises(TypeError, match="task 'x': received 3 as its factory; expected a Task subclass"):
        register_task("x", 3)


def test_a_factory_must_make_the_task_it_is_registered_for() -> None:
    register_task("not-echo", EchoTask)
    with pytest.raises(SpecError, match=r"task 'not-echo': registered factory EchoTask returned a Task named "
                                        r"'echo-test'; expected a Task named 'not-echo'"):
        get_task("not-echo")
    register_task("nothing", lambda: 42)
    with pytest.raises(SpecError, match=r"task 'nothing': registered factory .* returned 42 \(int\); "
                                        r"expected a Task named 'nothing'"):
        get_task("nothing")


def test_an_unknown_task_names_every_known_one() -> None:
    register_task("echo-test", EchoTask)
    with pytest.raises(SpecError) as exc:
        get_task("segmentation")
    msg = str(exc.value)
    assert msg.startswith("task 'segmentation': unknown; expected one of ")
    for name in (*TASK_NAMES, "echo-test"):
        assert name in msg
    assert ENTRY_POINT_GROUP in msg


def test_a_spec_naming_an_unknown_task_is_refused_at_the_task_field() -> None:
    with pytest.raises(SpecError) as exc:
        check_spec(Spec(task="segmentation", data=DataSpec(source="x")), where="p/modelloop.yaml")
    msg = str(exc.value)
    assert msg.startswith("p/modelloop.yaml: field 'task': received 'segmentation'; expected one of ")
    assert "image-classification" in msg and "recommendation" in msg


# -- tasks from other packages, through entry points -----------------------------------------------


PLUGIN = '''
from modelloop.tasks import Candidate
from modelloop.tasks.supervised import SupervisedTask


class AcmeTask(SupervisedTask):
    name = "acme-echo"
    input_kind = "text"
    candidates = {"tiny": Candidate("tiny", "linear", {"kind": "tfidf"})}
    default_candidates = ("tiny",)

    def prepare(self, data, base_dir):
        raise NotImplementedError

    def candidates_for(self, ds):
        return ["tiny"], {}

    def collate(self, items, like):
        return items, [True] * len(items)

    def parse_json(self, body, model, limits=None):
        return [body], False


def broken_factory():
    raise RuntimeError("no licence key")


NOT_A_FACTORY = 3
'''


@pytest.fixture()
def acme(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A distribution ``acme-tasks`` 1.0 installed in a folder on ``sys.path``, as pip would: its
    module and its ``.dist-info`` with ``entry_points.txt``. Returns its module's name."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "acme_tasks.py").write_text(PLUGIN)
    info = site / "acme_tasks-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-tasks\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(f"""\
        [{ENTRY_POINT_GROUP}]
        acme-echo = acme_tasks:AcmeTask
        acme-missing = acme_tasks_gone.tasks:Nope
        acme-typo = acme_tasks:AcmeTsk
        acme-broken = acme_tasks:broken_factory
        acme-number = acme_tasks:NOT_A_FACTORY

        [console_scripts]
        acme = acme_tasks:main
        """))
    monkeypatch.syspath_prepend(str(site))
    yield "acme_tasks"
    sys.modules.pop("acme_tasks", None)


def test_entry_point_tasks_are_listed_without_being_loaded(acme: str) -> None:
    names = task_names()
    assert {"acme-echo", "acme-missing", "acme-typo", "acme-broken", "acme-number"} <= set(names)
    assert "acme" not in names  # another group's entry point
    assert names[: len(TASK_NAMES)] == TASK_NAMES
    assert acme not in sys.modules


def test_an_entry_point_task_is_loaded_on_first_lookup(acme: str) -> None:
    assert acme not in sys.modules
    task = get_task("acme-echo")
    assert acme in sys.modules
    assert type(task).__module__ == acme and task.name == "acme-echo"
    assert type(get_task("acme-echo")) is type(task)  # loaded once, made on each request

    spec = Spec(task="acme-echo", data=DataSpec(source="x"), selection=SelectionSpec(candidates=["tiny"]))
    check_spec(spec)  # its own candidates, the default classification metrics
    assert spec.requirements.metric == "accuracy"


def test_a_registered_task_wins_over_an_entry_point_of_the_same_name(acme: str) -> None:
    register_task("acme-echo", lambda: _named(EchoTask(), "acme-echo"))
    assert isinstance(get_task("acme-echo"), EchoTask)
    assert acme not in sys.modules


@pytest.mark.parametrize(("name", "reason"), [
    ("acme-missing", r"failed to load \(ModuleNotFoundError: No module named 'acme_tasks_gone'\)"),
    ("acme-typo", r"failed to load \(AttributeError: .*AcmeTsk"),
    ("acme-number", r"gives 3; expected a Task subclass or a callable that returns a Task"),
])
def test_a_broken_entry_point_is_named_with_its_distribution(acme: str, name: str, reason: str) -> None:
    with pytest.raises(SpecError) as exc:
        get_task(name)
    msg = str(exc.value)
    ep_value = {"acme-missing": "acme_tasks_gone.tasks:Nope", "acme-typo": "acme_tasks:AcmeTsk",
                "acme-number": "acme_tasks:NOT_A_FACTORY"}[name]
    assert msg.startswith(f"task {name!r}: entry point '{name} = {ep_value}' "
                          f"(group {ENTRY_POINT_GROUP}, distribution acme-tasks 1.0)")
    assert re.search(reason, msg), msg


def test_an_entry_point_factory_that_fails_is_named(acme: str) -> None:
    with pytest.raises(SpecError, match=r"task 'acme-broken': entry point 'acme-broken = acme_tasks:broken_factory' "
                                        r".* failed \(RuntimeError: no licence key\); expected it to return a Task"):
        get_task("acme-broken")


def test_a_spec_with_a_broken_plugin_task_names_the_file_and_the_entry_point(acme: str) -> None:
    with pytest.raises(SpecError, match=r"^p/modelloop.yaml: task 'acme-missing': entry point 'acme-missing = "):
        check_spec(Spec(task="acme-missing", data=DataSpec(source="x")), where="p/modelloop.yaml")


def _named(task: Task, name: str) -> Task:
    task.name = name
    return task
