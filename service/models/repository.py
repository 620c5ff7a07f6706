"""The model repository: one folder a model, laid out like Triton's.

::

    <repository>/<model>/model.json    native format (service.models.native)
    <repository>/<model>/model.onnx    ONNX (service.models.onnx)

A model name is checked against :data:`NAME_PATTERN` before it touches the file
system, and the folder and file it names must resolve inside the repository (a
symlink pointing elsewhere is refused). A model whose files are invalid is
``UNAVAILABLE`` with its reason; the others serve.

Swaps are atomic: a (re)load builds the new model completely, then replaces the
entry in one assignment. A request holds a reference to the :class:`Model` it
started with, so an unload or reload while it computes lets it finish with the
old one.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .model import VERSION, Model, ModelLoadError, ModelState
from .native import load as load_native
from .onnx_runtime import CNNCORE, ENGINES

DEFAULT_REPOSITORY = Path(__file__).resolve().parent.parent / "default_models"
"""Used when ``CNN_MODEL_REPOSITORY`` is not set (a missing or empty folder is fine)."""

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""What a model name must match (the contract's pattern); ``..`` is refused besides."""


def _load_onnx(path: Path, name: str, engine: str = CNNCORE) -> Model:
    # Imported on first use: the onnx package loads only for repositories that hold ONNX models.
    loader: Callable[..., Model] = importlib.import_module("service.models.onnx").load
    return loader(path, name, engine)


LOADERS: dict[str, Callable[[Path, str], Model]] = {
    "model.json": load_native,
    "model.onnx": _load_onnx,
}
"""Model file name -> ``load(file_path, model_name) -> Model`` (raises :class:`ModelLoadError`)."""


class ModelNameError(ValueError):
    """A model name that does not match :data:`NAME_PATTERN` (a 400)."""


class ModelNotFoundError(LookupError):
    """No model of that name in the repository (a 404)."""


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid model name.

    Raises
    ------
    ModelNameError
        If it does not match :data:`NAME_PATTERN` or contains ``..``.
    """
    if not NAME_PATTERN.fullmatch(name) or ".." in name:
        shown = name[:64] + ("..." if len(name) > 64 else "")
        raise ModelNameError(
            f"{shown!r} is not a valid model name: 1 to 64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit, without '..'"
        )
    return name


@dataclass(frozen=True)
class ModelEntry:
    """One model of the index: its state, the reason when unavailable, the model when ready."""

    name: str
    state: ModelState
    reason: str = ""
    model: Model | None = None
    version: str = VERSION

    @property
    def platform(self) -> str | None:
        """The ready model's platform, else ``None``."""
        return self.model.platform if self.model else None

    def as_index(self) -> dict[str, str]:
        """The entry as ``POST /v2/repository/index`` lists it."""
        return {
            "name": self.name,
            "version": self.version,
            "state": self.state.value,
            "reason": self.reason,
        }


class ModelRepository:
    """The models of one repository folder, loaded once per process.

    Parameters
    ----------
    root
        The repository folder. A missing folder is an empty repository when
        ``must_exist`` is false (the bundled default), an error otherwise.
    max_model_bytes
        Most bytes the models may hold together (``CNN_MAX_MODEL_BYTES``); a model
        that would exceed it is ``UNAVAILABLE`` and says so.
    must_exist
        Whether a missing ``root`` is an error.
    single_model
        KServe's layout: ``root`` itself holds one model's file, served under this name
        (``CNN_MODEL_NAME``); no sub-folder is read.
    onnx_runtime
        Who answers ONNX models' plain inference (``CNN_ONNX_RUNTIME``, one of
        :data:`~service.models.onnx_runtime.ENGINES`).

    Raises
    ------
    FileNotFoundError
        If ``must_exist`` and ``root`` is not a directory.
    """

    def __init__(
        self,
        root: Path,
        max_model_bytes: int,
        *,
        must_exist: bool = True,
        single_model: str | None = None,
        onnx_runtime: str = CNNCORE,
    ) -> None:
        if onnx_runtime not in ENGINES:
            raise ValueError(
                f"onnx_runtime must be one of {', '.join(ENGINES)}, got {onnx_runtime!r}"
            )
        self.root = Path(root)
        self._loaders: dict[str, Callable[[Path, str], Model]] = {
            **LOADERS,
            "model.onnx": functools.partial(_load_onnx, engine=onnx_runtime),
        }
        self.single_model = None if single_model is None else check_name(single_model)
        if must_exist and not self.root.is_dir():
            raise FileNotFoundError(f"the model repository {str(self.root)!r} is not a directory")
        self.max_model_bytes = max_model_bytes
        self._entries: dict[str, ModelEntry] = {}
        self._lock = threading.Lock()  # serialises loads and unloads; reads take no lock
        self.scanned = False

    # -- reading ----------------------------------------------------------------------

    def index(self) -> list[ModelEntry]:
        """Every model, sorted by name."""
        entries = dict(self._entries)  # a snapshot: a concurrent swap cannot change it
        return [entries[name] for name in sorted(entries)]

    def names(self) -> frozenset[str]:
        """The names of the known models (ready or not)."""
        return frozenset(self._entries)

    def entry(self, name: str) -> ModelEntry:
        """The entry of ``name``.

        Raises
        ------
        ModelNameError
            If ``name`` is not a valid model name.
        ModelNotFoundError
            If the repository has no such model.
        """
        entry = self._entries.get(check_name(name))
        if entry is None:
            raise ModelNotFoundError(f"unknown model {name!r}: the repository has no such folder")
        return entry

    def used_bytes(self) -> int:
        """Bytes held by the ready models together."""
        return sum(e.model.nbytes for e in self._entries.values() if e.model is not None)

    # -- changing ---------------------------------------------------------------------

    def scan(self) -> list[ModelEntry]:
        """Load every model folder of the repository (hidden folders and plain files are
        skipped); returns the index. A folder whose name is not a valid model name is
        listed as ``UNAVAILABLE`` under a safe form of its name."""
        with self._lock:
            if self.single_model is not None:
                self._entries[self.single_model] = self._read(self.single_model)
                self.scanned = True
                return self.index()
            folders = sorted(p.name for p in self._folders())
            for folder in folders:
                try:
                    check_name(folder)
                except ModelNameError as exc:
                    shown = folder.encode("ascii", "replace").decode()[:64]
                    self._entries[shown] = ModelEntry(shown, ModelState.UNAVAILABLE, str(exc))
                    continue
                self._entries[folder] = self._read(folder)
            self.scanned = True
        return self.index()

    def load(self, name: str) -> ModelEntry:
        """(Re)read model ``name``'s folder and swap the new model in atomically.

        An invalid model replaces the entry as ``UNAVAILABLE`` with its reason (as
        Triton does); the returned entry says which.

        Raises
        ------
        ModelNameError
            If ``name`` is not a valid model name (checked before any file is touched).
        ModelNotFoundError
            If the repository has no folder of that name.
        """
        check_name(name)
        with self._lock:
            if not self._folder(name).is_dir():
                self._entries.pop(name, None)
                raise ModelNotFoundError(
                    f"unknown model {name!r}: the repository has no such folder"
                )
            entry = self._read(name)
            self._entries[name] = entry
            return entry

    def unload(self, name: str) -> ModelEntry:
        """Drop model ``name``: it is ``UNAVAILABLE`` ("unloaded") until loaded again.
        Requests already computing with it finish (they hold their own reference).

        Raises
        ------
        ModelNameError, ModelNotFoundError
            As :meth:`entry`.
        """
        with self._lock:
            self.entry(name)
            entry = ModelEntry(name, ModelState.UNAVAILABLE, "unloaded")
            self._entries[name] = entry
            return entry

    # -- files ------------------------------------------------------------------------

    def _folders(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return [p for p in self.root.iterdir() if not p.name.startswith(".") and p.is_dir()]

    def _folder(self, name: str) -> Path:
        """The folder of model ``name`` (it may not exist)."""
        if self.single_model is not None:
            if name != self.single_model:
                raise ModelNotFoundError(f"unknown model {name!r}: this server holds one model")
            return self.root
        return self.root / check_name(name)

    def _read(self, name: str) -> ModelEntry:
        """Load ``name`` (lock held); an invalid model is an ``UNAVAILABLE`` entry."""
        try:
            model = self._load_file(name)
        except ModelLoadError as exc:
            return ModelEntry(name, ModelState.UNAVAILABLE, exc.reason)
        return ModelEntry(name, ModelState.READY, "", model)

    def _load_file(self, name: str) -> Model:
        folder = self._folder(name)
        root = self.root.resolve()
        if not _inside(folder, root):
            raise ModelLoadError(f"{name}/: the folder resolves outside the repository")
        present = [f for f in LOADERS if (folder / f).exists() or (folder / f).is_symlink()]
        if not present:
            raise ModelLoadError(f"{name}/: no model file; expected one of {', '.join(LOADERS)}")
        if len(present) > 1:
            raise ModelLoadError(
                f"{name}/: holds {' and '.join(present)}; a model folder holds exactly one"
            )
        path = folder / present[0]
        if not _inside(path, root):
            raise ModelLoadError(f"{name}/{present[0]}: resolves outside the repository")
        if not path.is_file():
            raise ModelLoadError(f"{name}/{present[0]}: not a regular file")
        old = self._entries.get(name)
        # The model being replaced is freed once the swap is done: it does not count.
        budget = (
            self.max_model_bytes
            - self.used_bytes()
            + (old.model.nbytes if old and old.model else 0)
        )
        size = os.stat(path).st_size
        if size > budget:
            raise ModelLoadError(_over_budget(name, present[0], "the file is", size, budget, self))
        model = self._loaders[present[0]](path, name)
        if model.nbytes > budget:
            raise ModelLoadError(
                _over_budget(name, present[0], "its weights take", model.nbytes, budget, self)
            )
        return model


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path``, symlinks resolved, lies inside ``root``."""
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # a symlink loop
        return False


def _over_budget(
    name: str, file: str, what: str, size: int, budget: int, repo: ModelRepository
) -> str:
    mib = 2**20
    return (
        f"{name}/{file}: {what} {size / mib:.1f} MiB, more than the {max(budget, 0) / mib:.1f} MiB "
        f"left of CNN_MAX_MODEL_BYTES ({repo.max_model_bytes / mib:.1f} MiB for all models)"
    )
