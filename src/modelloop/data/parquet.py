"""Parquet input: pyarrow is the optional ``parquet`` extra (``pip install 'modelloop[parquet]'``)."""

from __future__ import annotations

from types import ModuleType

from ..errors import DataError

__all__ = ["require_pyarrow"]


def require_pyarrow(source: object) -> ModuleType:
    """The pyarrow module, or a DataError naming the ``parquet`` extra when it is not installed."""
    try:
        import pyarrow  # imported here: only Parquet files need it
    except ImportError:
        raise DataError(f"data source {str(source)!r}: reading Parquet needs pyarrow, which is not installed; "
                        "install it with pip install 'modelloop[parquet]', or give a CSV file") from None
    return pyarrow
