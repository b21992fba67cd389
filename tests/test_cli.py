"""Bad input on the command line: a clear message naming the file or field, and exit code 2."""

from __future__ import annotations

import json

import yaml

from tests.conftest import cli, cli_json, write_digit_folder


def _error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    text = " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in text, (n, text)


def test_init_missing_path(tmp_path):
    _error(cli("init", tmp_path / "p", "--data", tmp_path / "nowhere"), "nowhere", "no such folder",
           "class subfolders")
    assert not (tmp_path / "p" / "modelloop.yaml").exists()


def test_init_unknown_task_and_builtin(tmp_path):
    _error(cli("init", tmp_path / "p", "--task", "poetry", "--data", "builtin:seed-case"), "'poetry'",
           "image-classification")
    _error(cli("init", tmp_path / "p", "--data", "builtin:cifar"), "builtin:cifar", "builtin:seed-case")


def test_init_malformed_requirement(tmp_path):
    _error(cli("init", tmp_path / "p", "--data", "builtin:seed-case", "--target", "1.5"),
           "requirements.target", "1.5")
    _error(cli("init", tmp_path / "p", "--data", "builtin:seed-case", "--metric", "speed"),
           "requirements.metric", "'speed'")


def test_init_writes_spec_and_json(tmp_path):
    out = cli_json("init", tmp_path / "p", "--data", "builtin:seed-case", "--target", "0.9",
                   "--p95-latency-ms", "20")
    spec = yaml.safe_load((tmp_path / "p" / "modelloop.yaml").read_text())
    assert spec["task"] == "image-classification"
    assert spec["data"]["source"] == "builtin:seed-case"
    assert spec["requirements"]["target"] == 0.9 and spec["requirements"]["p95_latency_ms"] == 20
    assert out["spec_content"] == spec
    _error(cli("init", tmp_path / "p", "--data", "builtin:seed-case"), "already exists")


def test_run_empty_folder(tmp_path):
    (tmp_path / "data").mkdir()
    cli_json("init", tmp_path / "p", "--data", tmp_path / "data")
    _error(cli("run", tmp_path / "p"), "no class subfolders")


def test_run_class_with_single_image(tmp_path, mnist):
    data = write_digit_folder(tmp_path / "data", mnist, digits=(3, 8), per_class=5)
    for f in sorted((data / "digit8").iterdir())[1:]:
        f.unlink()
    cli_json("init", tmp_path / "p", "--data", data)
    proc = cli("run", tmp_path / "p", "--json")
    _error(proc, "digit8", "has 1 usable image", "at least 2 images per class")
    assert "error" in json.loads(proc.stdout)


def test_run_corrupt_and_zero_byte_files(tmp_path, mnist):
    data = write_digit_folder(tmp_path / "data", mnist, digits=(3, 8), per_class=4)
    (data / "digit3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (data / "digit8" / "empty.jpg").write_bytes(b"")
    cli_json("init", tmp_path / "p", "--data", data)
    spec_path = tmp_path / "p" / "modelloop.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    spec["data"]["on_bad_file"] = "error"
    spec_path.write_text(yaml.safe_dump(spec))
    _error(cli("run", tmp_path / "p"), "broken.png", "expected a PNG, JPEG or BMP image")
    (data / "digit3" / "broken.png").unlink()
    _error(cli("run", tmp_path / "p"), "empty.jpg", "0 bytes")


def test_spec_unknown_task_and_bad_field(tmp_path):
    cli_json("init", tmp_path / "p", "--data", "builtin:seed-case")
    spec_path = tmp_path / "p" / "modelloop.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    spec_path.write_text(yaml.safe_dump({**spec, "task": "image-generation"}))
    _error(cli("run", tmp_path / "p"), "modelloop.yaml", "'image-generation'", "image-classification")
    spec["requirements"]["target"] = "high"
    spec_path.write_text(yaml.safe_dump(spec))
    _error(cli("run", tmp_path / "p"), "modelloop.yaml", "requirements.target", "'high'")
    spec["requirements"] = {"metric": "accuracy", "target": 0.9, "latency": 5}
    spec_path.write_text(yaml.safe_dump(spec))
    _error(cli("models", tmp_path / "p"), "requirements.latency", "unknown field")


def test_commands_on_a_folder_without_project(tmp_path):
    for args in (("run", tmp_path), ("retrain", tmp_path), ("models", tmp_path), ("serve", tmp_path),
                 ("rollback", tmp_path)):
        _error(cli(*args), "modelloop.yaml", "no such file")


def test_retrain_promote_rollback_without_versions(tmp_path):
    cli_json("init", tmp_path / "p", "--data", "builtin:seed-case")
    _error(cli("retrain", tmp_path / "p"), "no champion")
    _error(cli("promote", tmp_path / "p", "v3"), "'v3'", "none yet")
    _error(cli("rollback", tmp_path / "p"), "nothing to roll back")
    assert cli_json("models", tmp_path / "p") == {"champion": None, "versions": []}
