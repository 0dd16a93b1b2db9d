"""The code version of a stage: a hash of its module and of every in-repo module it imports, transitively.

A step's identity includes this hash (docs/design.md, "Identities"), so editing any code a stage can run
gives the step a new identity and the next round recomputes it, while an edit elsewhere leaves it alone
and a resumed round still reuses the step. The closure is found by reading the import statements of each
module with `ast` (imports inside functions count: stages import heavy libraries lazily; an
`if __name__ == "__main__":` block does not, as a step never runs it), never from a hand-kept list and
never by importing anything.

    >>> code_identity("storage.ids") == code_identity("storage.ids")
    True
"""

from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

PACKAGE_VERSION = "0.1.0"
REPO_ROOT = Path(__file__).resolve().parent.parent
# Top-level packages of this repository; imports of anything else (stdlib, torch, vLLM...) are versioned
# by the environment, not by the hash.
PACKAGES = ("configs", "demo", "flows", "storage", "tasks", "trainers")


def module_file(module: str, root: Path = REPO_ROOT) -> Path | None:
    """The source file of an in-repo module under `root` (a package's __init__.py), or None."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path, root: Path = REPO_ROOT) -> str:
    """The dotted name of a source file under `root`: tasks/curate.py -> tasks.curate."""
    parts = path.resolve().relative_to(root.resolve()).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_closure(module: str, root: Path = REPO_ROOT, path: Path | None = None) -> dict[str, Path]:
    """`module` and every in-repo module it imports, directly or not: {name: source file}, sorted by name.

    `import a.b.c` and `from a.b import c` also count the packages a and a.b, whose __init__ runs first.
    `path` is the file of `module` itself where it lives outside the packages (a test module).
    """
    files: dict[str, Path] = {}
    todo = [(module, path or module_file(module, root))]
    while todo:
        name, file = todo.pop()
        if name in files or file is None:
            continue
        files[name] = file
        todo.extend((m, module_file(m, root)) for m in _imports(name, file))
    return dict(sorted(files.items()))


def code_identity(module: str, root: Path = REPO_ROOT, path: Path | None = None) -> str:
    """PACKAGE_VERSION + "+" + 12 hex digits over (name, source hash) of each module of the closure."""
    closure = import_closure(module, root, path)
    if not closure:
        raise ValueError(f"{module!r} is not a module under {root} (expected one of the packages {PACKAGES})")
    lines = [f"{name}\t{_digest(_source(file))}" for name, file in closure.items()]
    return PACKAGE_VERSION + "+" + hashlib.sha256("\n".join(lines).encode()).hexdigest()[:12]


def _imports(module: str, path: Path) -> set[str]:
    """In-repo modules named by the import statements of one module (candidates; missing ones drop out)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in _walk_run_code(_parse(_source(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, package)
            # `from pkg import name` may name a submodule or an attribute: keep both candidates.
            names = [base, *(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")] if base else []
        else:
            continue
        for name in names:
            if name.split(".")[0] in PACKAGES:
                parts = name.split(".")
                found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return found


def _walk_run_code(tree: ast.AST):
    """ast.walk, minus `if __name__ == "__main__":` blocks: a command-line entry point is not run by the step."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        todo.extend(child for child in ast.iter_child_nodes(node) if not _is_main_block(child))


def _is_main_block(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and len(test.comparators) == 1
        and isinstance(test.comparators[0], ast.Constant)
        and test.comparators[0].value == "__main__"
    )


def _absolute(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    parent = parts[: len(parts) - node.level + 1]
    return ".".join([*parent, node.module] if node.module else parent)


@lru_cache(maxsize=1024)
def _parse(source: str) -> ast.Module:
    return ast.parse(source)


def _source(path: Path | None) -> str:
    return path.read_text(encoding="utf-8") if path is not None else ""


def _digest(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()
