"""The model repository: names, folders, loaders (native ``model.json``, ``model.onnx``),
states and reasons.

>>> repo = ModelRepository(Path("models"), max_model_bytes=2**30)   # doctest: +SKIP
>>> repo.scan()                                                      # doctest: +SKIP
[ModelEntry(name='digits', state=<ModelState.READY: 'READY'>, ...)]

A loader is ``load(file_path, model_name) -> Model`` raising :class:`ModelLoadError`;
:data:`LOADERS` maps each model file name to its loader.
"""

from .model import MODEL_DATATYPES, VERSION, Model, ModelLoadError, ModelState, hold
from .repository import (
    DEFAULT_REPOSITORY,
    LOADERS,
    NAME_PATTERN,
    ModelEntry,
    ModelNameError,
    ModelNotFoundError,
    ModelRepository,
    check_name,
)

__all__ = [
    "DEFAULT_REPOSITORY",
    "LOADERS",
    "MODEL_DATATYPES",
    "NAME_PATTERN",
    "VERSION",
    "Model",
    "ModelEntry",
    "ModelLoadError",
    "ModelNameError",
    "ModelNotFoundError",
    "ModelRepository",
    "ModelState",
    "check_name",
    "hold",
]
