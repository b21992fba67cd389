"""``modelloop init DIR --task recommendation``: write a validated ``modelloop.yaml``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import SpecError
from ..spec import SPEC_FILE, parse_spec, save_spec

__all__ = ["init_project", "COLUMN_OPTIONS", "DEFAULT_SOURCE"]

DEFAULT_SOURCE = "builtin:movielens-100k"
#: keyword -> field of the ``recommendation`` section
COLUMN_OPTIONS = ("user_column", "item_column", "rating_column", "timestamp_column", "items", "item_id_column",
                  "item_text_columns", "candidates")
_NONE = ("", "none", "null")


def init_project(path: str | Path, data: str | None = None, name: str | None = None, overwrite: bool = False,
                 **options: Any) -> Path:
    """Write ``path/modelloop.yaml`` for a recommendation project and check that its data loads.

    ``options``: the ``recommendation`` section's fields (:data:`COLUMN_OPTIONS`; ``rating_column``
    ``"none"`` means implicit data; ``item_text_columns`` a list or a comma-separated string) and
    the requirement fields (metric, target, p95_latency_ms, max_model_size_mb, time_budget_s).

    Raises:
        SpecError: a spec already exists, or a field is invalid.
        DataError: the data cannot be loaded with the given columns.
    """
    from ..tasks.recommendation import load_data

    path = Path(path)
    if (path / SPEC_FILE).exists() and not overwrite:
        raise SpecError(f"{path / SPEC_FILE}: already exists; expected a new project folder "
                        "(or pass overwrite/--force)")
    source = data or DEFAULT_SOURCE
    if not source.startswith("builtin:"):
        source = str(Path(source).resolve())
    rec: dict[str, Any] = {}
    for key in COLUMN_OPTIONS:
        value = options.pop(key, None)
        if value is None:
            continue
        if key in ("rating_column", "timestamp_column") and str(value).lower() in _NONE:
            value = None
        if key == "item_text_columns" and isinstance(value, str):
            value = [c.strip() for c in value.split(",") if c.strip()]
        if key == "items" and value is not None:
            value = str(Path(value).resolve())
        rec[key] = value
    if source.startswith("builtin:") and "rating_column" not in rec:
        rec["rating_column"] = "rating"
    reqs = {k: v for k, v in options.items() if v is not None}
    spec = parse_spec({"name": name or path.resolve().name, "task": "recommendation", "data": {"source": source},
                       "requirements": reqs, "recommendation": rec}, where=str(path / SPEC_FILE))
    load_data(spec, path.resolve())  # columns, duplicates and sizes checked now, not at the first run
    path.mkdir(parents=True, exist_ok=True)
    save_spec(spec, path)
    return path
