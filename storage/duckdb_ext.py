"""DuckDB extensions from their PyPI packages, never downloaded.

DuckDB fetches extensions from its own site on first use, which machines without internet (and many
clusters) cannot reach. The `duckdb-extension-<name>` wheels carry the same binaries for one DuckDB
release (1.5.5: the newest with packages; DuckDB 2.0 has none), so they are installed from the wheel's
file and then loaded. A plain `LOAD ducklake` would try the network and fail.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import duckdb


class ExtensionMissing(Exception):
    """An extension's PyPI package is not installed for this DuckDB release."""


def extension_file(name: str) -> Path:
    """The packaged `<name>.duckdb_extension` for the running DuckDB, or ExtensionMissing saying what to install."""
    version = duckdb.__version__
    spec = importlib.util.find_spec(f"duckdb_extension_{name}")
    hint = f"pip install duckdb=={version} duckdb-extension-{name}=={version}"
    if spec is None or not spec.submodule_search_locations:
        raise ExtensionMissing(f"the DuckDB extension {name!r} is not installed: {hint}")
    root = Path(next(iter(spec.submodule_search_locations)))
    found = root / "extensions" / f"v{version}" / f"{name}.duckdb_extension"
    if not found.is_file():
        have = sorted(p.name for p in (root / "extensions").glob("v*"))
        raise ExtensionMissing(f"duckdb-extension-{name} has builds for {have}, not DuckDB {version}: {hint}")
    return found


def load_extensions(con: duckdb.DuckDBPyConnection, *names: str) -> None:
    """INSTALL each extension from its packaged file, then LOAD it, on this connection's database."""
    for name in names:
        con.execute(f"INSTALL '{extension_file(name)}'")
        con.execute(f"LOAD {name}")
