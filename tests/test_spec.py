"""The project spec: YAML round-trip, defaults, and SpecError messages that name file, field and value."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from modelloop.errors import DataError, ModelloopError, SpecError
from modelloop.project import Project
from modelloop.spec import (
    SPEC_FILE,
    AugmentSpec,
    DataSpec,
    Requirements,
    SelectionSpec,
    Spec,
    SplitSpec,
    TrainingSpec,
    load_spec,
    save_spec,
)
from modelloop.tasks import check_spec


def write_yaml(folder: Path, data: object) -> Path:
    path = folder / SPEC_FILE
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def spec_error(folder: Path, data: object) -> str:
    """Write ``data`` as the spec in ``folder``, load it, and return the SpecError message."""
    write_yaml(folder, data)
    with pytest.raises(SpecError) as exc:
        load_spec(folder)
    return str(exc.value)


def checked_spec_error(folder: Path, data: object) -> str:
    """Like :func:`spec_error`, for what only the task checks: load the spec, check it against its
    task (as the loop does when it opens a project), and return the SpecError message."""
    write_yaml(folder, data)
    with pytest.raises(SpecError) as exc:
        check_spec(load_spec(folder), where=folder / SPEC_FILE)
    return str(exc.value)


# -- round trip and defaults ---------------------------------------------------------------------


def test_save_then_load_round_trips_every_field(tmp_path: Path) -> None:
    spec = Spec(
        name="digits",
        data=DataSpec(source="/data/digits", image_size=(32, 48), split=SplitSpec(validation=0.2, test=0.1, seed=7),
                      augmentation=AugmentSpec(shift=3), on_bad_file="error"),
        requirements=Requirements(metric="f1_macro", target=0.8, p95_latency_ms=12.5, max_model_size_mb=3.0,
                                  time_budget_s=120),
        selection=SelectionSpec(candidates=["cnn", "linear"], trials=4, epochs_per_trial=2, share_of_budget=0.3),
        training=TrainingSpec(max_epochs=10, patience=2, batch_size=32),
        seed=11,
    )
    path = save_spec(spec, tmp_path / "proj")
    assert path == tmp_path / "proj" / SPEC_FILE
    assert path.is_file()
    loaded = load_spec(tmp_path / "proj")
    assert loaded == spec
    assert loaded.data.image_size == (32, 48)
    assert loaded.requirements.p95_latency_ms == 12.5
    # The file on disk is plain YAML, readable without modelloop.
    raw = yaml.safe_load(path.read_text())
    assert raw["data"]["image_size"] == [32, 48]
    assert raw["requirements"]["metric"] == "f1_macro"


def test_minimal_spec_gets_documented_defaults(tmp_path: Path) -> None:
    write_yaml(tmp_path, {"data": {"source": "builtin:seed-case"}})
    spec = load_spec(tmp_path)
    assert spec.name == "project"
    assert spec.task == "image-classification"
    assert spec.seed == 0
    assert spec.data.source == "builtin:seed-case"
    assert spec.data.image_size is None
    assert spec.data.on_bad_file == "drop"
    assert (spec.data.split.validation, spec.data.split.test, spec.data.split.seed) == (0.15, 0.15, 0)
    assert spec.data.augmentation.shift == 2
    r = spec.requirements
    assert (r.metric, r.target, r.p95_latency_ms, r.max_model_size_mb, r.time_budget_s) == (
        "accuracy", None, None, None, 600.0)  # no target: significantly better than the trivial baseline
    assert spec.selection.candidates is None  # the task chooses for the data
    assert (spec.selection.trials, spec.selection.epochs_per_trial) == (9, 8)
    assert (spec.training.max_epochs, spec.training.patience, spec.training.batch_size) == (40, 6, 64)


def test_saved_defaults_load_back_equal(tmp_path: Path) -> None:
    spec = Spec(data=DataSpec(source="imgs"))
    save_spec(spec, tmp_path)
    assert load_spec(tmp_path) == spec


def test_duplicate_candidates_are_collapsed_in_order(tmp_path: Path) -> None:
    write_yaml(tmp_path, {"data": {"source": "x"}, "selection": {"candidates": ["cnn", "linear", "cnn"]}})
    assert load_spec(tmp_path).selection.candidates == ["cnn", "linear"]


# -- errors: each names the file, the field and the received value --------------------------------


def test_unknown_task_is_a_spec_error_naming_file_task_and_value(tmp_path: Path) -> None:
    msg = checked_spec_error(tmp_path, {"task": "segmentation", "data": {"source": "x"}})
    assert str(tmp_path / SPEC_FILE) in msg
    assert "task" in msg
    assert "'segmentation'" in msg
    assert "image-classification" in msg  # what was expected


def test_unknown_task_message_names_the_task_field(tmp_path: Path) -> None:
    msg = checked_spec_error(tmp_path, {"task": "segmentation", "data": {"source": "x"}})
    assert "field 'task'" in msg


@pytest.mark.parametrize(
    ("requirements", "field", "received"),
    [
        ({"target": 1.5}, "requirements.target", "1.5"),
        ({"target": "high"}, "requirements.target", "'high'"),
        ({"metric": "auc"}, "requirements.metric", "'auc'"),
        ({"p95_latency_ms": -5}, "requirements.p95_latency_ms", "-5"),
        ({"max_model_size_mb": 0}, "requirements.max_model_size_mb", "0"),
    ],
)
def test_malformed_requirement_names_file_field_and_value(tmp_path: Path, requirements: dict, field: str,
                                                          received: str) -> None:
    msg = spec_error(tmp_path, {"data": {"source": "x"}, "requirements": requirements})
    assert msg.startswith(str(tmp_path / SPEC_FILE))
    assert f"field {field!r}" in msg
    assert f"received {received}" in msg
    assert "expected" in msg


def test_unknown_metric_error_lists_the_valid_metrics(tmp_path: Path) -> None:
    msg = spec_error(tmp_path, {"data": {"source": "x"}, "requirements": {"metric": "auc"}})
    for metric in ("accuracy", "f1_macro", "precision_macro", "recall_macro"):
        assert metric in msg


def test_an_empty_task_name_is_refused_by_the_spec_itself(tmp_path: Path) -> None:
    msg = spec_error(tmp_path, {"task": " ", "data": {"source": "x"}})
    assert "field 'task'" in msg
    assert "must name a task" in msg


# -- what only the task knows: its candidates, metrics and defaults ----------------------------------


def test_a_task_name_the_spec_does_not_know_loads_and_is_left_to_the_tasks(tmp_path: Path) -> None:
    write_yaml(tmp_path, {"task": "my-plugin-task", "data": {"source": "x"}})
    assert load_spec(tmp_path).task == "my-plugin-task"


@pytest.mark.parametrize(("task", "candidate", "allowed"), [
    ("image-classification", "tfidf-linear", "linear, mlp, cnn, efficientnet, efficientnet-finetune"),
    ("text-classification", "cnn", "tfidf-linear, minilm-linear, minilm-mlp, tfidf-minilm-linear, minilm-lora"),
    ("audio-classification", "linear", "cnn, ds-cnn"),
    ("tabular-regression", "bogus", "linear, mlp, hgb"),
])
def test_a_candidate_of_another_task_names_field_value_and_the_tasks_candidates(
        tmp_path: Path, task: str, candidate: str, allowed: str) -> None:
    msg = checked_spec_error(tmp_path, {"task": task, "data": {"source": "x"},
                                        "selection": {"candidates": [candidate]}})
    assert msg.startswith(str(tmp_path / SPEC_FILE))
    assert "field 'selection.candidates'" in msg
    assert f"received {candidate!r}" in msg
    assert f"not a candidate for {task}" in msg
    assert f"expected some of {allowed}" in msg


@pytest.mark.parametrize(("task", "metric", "kind", "allowed"), [
    ("image-classification", "r2", "classification", "accuracy, f1_macro, precision_macro, recall_macro"),
    ("tabular-regression", "accuracy", "regression", "r2, rmse, mae"),
    ("recommendation", "f1_macro", "ranking", "ndcg@10, precision@10, recall@10"),
])
def test_a_metric_of_another_task_names_field_value_and_the_tasks_metrics(
        tmp_path: Path, task: str, metric: str, kind: str, allowed: str) -> None:
    msg = checked_spec_error(tmp_path, {"task": task, "data": {"source": "x"}, "requirements": {"metric": metric}})
    assert msg.startswith(str(tmp_path / SPEC_FILE))
    assert "field 'requirements.metric'" in msg
    assert f"received {metric!r}" in msg
    assert f"not a {kind} metric for {task}" in msg
    assert f"expected one of {allowed}" in msg


@pytest.mark.parametrize(("task", "metric", "target"), [
    ("image-classification", "accuracy", None),  # no target: better than the trivial baseline
    ("text-classification", "accuracy", None),
    ("tabular-regression", "r2", None),
    ("recommendation", "ndcg@10", None),
])
def test_an_unset_metric_and_target_are_the_tasks_defaults(tmp_path: Path, task: str, metric: str,
                                                           target: float) -> None:
    write_yaml(tmp_path, {"task": task, "data": {"source": "x"}})
    spec = load_spec(tmp_path)
    check_spec(spec)
    assert (spec.requirements.metric, spec.requirements.target) == (metric, target)
    check_spec(spec)  # checking again changes nothing
    assert (spec.requirements.metric, spec.requirements.target) == (metric, target)
    # what is written and read back is the same spec, and it checks the same
    save_spec(spec, tmp_path / "again")
    again = load_spec(tmp_path / "again")
    check_spec(again)
    assert again == spec


def test_a_set_target_stays_when_the_metric_is_the_tasks_default(tmp_path: Path) -> None:
    write_yaml(tmp_path, {"task": "tabular-regression", "data": {"source": "x"}, "requirements": {"target": 0.8}})
    spec = load_spec(tmp_path)
    check_spec(spec)
    assert (spec.requirements.metric, spec.requirements.target) == ("r2", 0.8)


def test_misspelled_field_is_reported_as_unknown(tmp_path: Path) -> None:
    msg = spec_error(tmp_path, {"data": {"source": "x"}, "requirments": {"target": 0.9}})
    assert str(tmp_path / SPEC_FILE) in msg
    assert "field 'requirments'" in msg
    assert "unknown field" in msg
    assert "0.9" in msg  # the received value
    assert "spelling" in msg


def test_misspelled_nested_field_is_reported_with_its_path(tmp_path: Path) -> None:
    msg = spec_error(tmp_path, {"data": {"source": "x", "on_bad_files": "drop"}})
    assert "field 'data.on_bad_files'" in msg
    assert "unknown field" in msg


def test_missing_data_section_is_reported(tmp_path: Path) -> None:
    msg = spec_error(tmp_path, {"name": "p"})
    assert "field 'data'" in msg
    assert "missing" in msg


def test_bad_image_size_names_field_and_range(tmp_path: Path) -> None:
    msg = spec_error(tmp_path, {"data": {"source": "x", "image_size": [2, 600]}})
    assert "field 'data.image_size'" in msg
    assert "[2, 600]" in msg
    assert "between 4 and 512" in msg


def test_several_problems_are_all_reported(tmp_path: Path) -> None:
    msg = spec_error(tmp_path, {"data": {"source": "x"}, "requirements": {"target": 2, "metric": "auc"}})
    assert "requirements.target" in msg
    assert "requirements.metric" in msg


def test_invalid_yaml_is_a_spec_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / SPEC_FILE).write_text("data:\n  source: [unclosed\n  other: {\n")
    with pytest.raises(SpecError) as exc:
        load_spec(tmp_path)
    msg = str(exc.value)
    assert str(tmp_path / SPEC_FILE) in msg
    assert "not valid YAML" in msg
    assert "expected a YAML mapping" in msg


def test_missing_spec_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as exc:
        load_spec(tmp_path / "nowhere")
    msg = str(exc.value)
    assert str(tmp_path / "nowhere" / SPEC_FILE) in msg
    assert "no such file" in msg
    assert "modelloop init" in msg


def test_yaml_list_instead_of_mapping_is_a_spec_error(tmp_path: Path) -> None:
    (tmp_path / SPEC_FILE).write_text("- task: image-classification\n- data: x\n")
    with pytest.raises(SpecError) as exc:
        load_spec(tmp_path)
    msg = str(exc.value)
    assert str(tmp_path / SPEC_FILE) in msg
    assert "received list" in msg
    assert "expected a mapping" in msg


def test_empty_yaml_file_is_a_spec_error(tmp_path: Path) -> None:
    (tmp_path / SPEC_FILE).write_text("")
    with pytest.raises(SpecError, match="received NoneType; expected a mapping"):
        load_spec(tmp_path)


def test_spec_error_is_a_modelloop_error_with_exit_code_2() -> None:
    assert issubclass(SpecError, ModelloopError)
    assert SpecError("x").exit_code == 2


def test_assignment_is_validated_too() -> None:
    req = Requirements(target=0.95)
    with pytest.raises(ValueError):
        req.target = 3.0
    assert req.target == 0.95


# -- Project.init writes a spec that load_spec accepts --------------------------------------------


def test_project_init_writes_a_loadable_spec(tmp_path: Path) -> None:
    p = Project.init(tmp_path / "proj", data="builtin:seed-case", metric="f1_macro", target=0.9,
                     p95_latency_ms=None)
    spec = load_spec(tmp_path / "proj")
    assert p.path == (tmp_path / "proj").resolve()
    assert spec.name == "proj"
    assert spec.data.source == "builtin:seed-case"
    assert spec.requirements.metric == "f1_macro"
    assert spec.requirements.target == 0.9
    assert spec.requirements.p95_latency_ms is None  # None options are left at their default


def test_project_init_stores_an_existing_data_folder_as_absolute_path(tmp_path: Path) -> None:
    data = tmp_path / "imgs"
    data.mkdir()
    Project.init(tmp_path / "proj", data=str(data))
    assert Path(load_spec(tmp_path / "proj").data.source) == data.resolve()


def test_project_init_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    Project.init(tmp_path / "proj", target=0.5)
    with pytest.raises(SpecError, match="already exists"):
        Project.init(tmp_path / "proj", target=0.7)
    assert load_spec(tmp_path / "proj").requirements.target == 0.5
    Project.init(tmp_path / "proj", target=0.7, overwrite=True)
    assert load_spec(tmp_path / "proj").requirements.target == 0.7


def test_project_init_rejects_bad_input_without_writing(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="'segmentation'"):
        Project.init(tmp_path / "a", task="segmentation")
    with pytest.raises(SpecError, match=r"requirements\.target.*received 1\.5"):
        Project.init(tmp_path / "b", target=1.5)
    with pytest.raises(DataError, match="builtin:nope"):
        Project.init(tmp_path / "c", data="builtin:nope")
    with pytest.raises(DataError, match="no such folder"):
        Project.init(tmp_path / "d", data=str(tmp_path / "missing"))
    for sub in "abcd":
        assert not (tmp_path / sub / SPEC_FILE).exists()
