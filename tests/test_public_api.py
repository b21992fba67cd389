"""The package's public surface: what ``import modelloop`` promises."""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path

import pytest

import modelloop
from modelloop import errors

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


@pytest.mark.parametrize("name", modelloop.__all__)
def test_every_name_in_all_is_exposed(name: str) -> None:
    assert hasattr(modelloop, name)
    assert getattr(modelloop, name) is not None


def test_all_has_no_duplicates_and_covers_the_main_entry_points() -> None:
    assert len(set(modelloop.__all__)) == len(modelloop.__all__)
    assert {"Project", "Loop", "Spec", "Requirements", "load_spec", "ModelloopError"} <= set(modelloop.__all__)


def test_star_import_gives_exactly_all() -> None:
    ns: dict = {}
    exec("from modelloop import *", ns)
    assert set(ns) - {"__builtins__"} == set(modelloop.__all__)


def test_version_matches_the_package_metadata() -> None:
    v = modelloop.__version__
    assert isinstance(v, str) and re.fullmatch(r"\d+\.\d+\.\d+.*", v)
    assert v == tomllib.loads(PYPROJECT.read_text())["project"]["version"]


def test_exported_names_are_the_real_objects() -> None:
    from modelloop.loop import Loop
    from modelloop.project import Project
    from modelloop.spec import Requirements, Spec, load_spec

    assert modelloop.Project is Project
    assert modelloop.Loop is Loop
    assert modelloop.Spec is Spec
    assert modelloop.Requirements is Requirements
    assert modelloop.load_spec is load_spec


def test_errors_share_one_base_with_exit_code_and_http_status() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, modelloop.ModelloopError)
        assert cls.exit_code == 2
    assert errors.InputError.http_status == 422
    assert errors.NotFoundError.http_status == 404
    assert errors.RegistryError.http_status == 404
    assert errors.SpecError.http_status == 400
    for name in ("SpecError", "DataError", "InputError", "NotFoundError", "RegistryError"):
        assert getattr(modelloop, name) is getattr(errors, name)


@pytest.mark.parametrize("module", ["modelloop.data", "modelloop.registry", "modelloop.feedback", "modelloop.spec",
                                    "modelloop.gate", "modelloop.evaluate", "modelloop.models"])
def test_subpackage_all_names_exist(module: str) -> None:
    mod = importlib.import_module(module)
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.{name}"
