"""The model zoo, registered by the names job specs use (`model.type`)."""

from __future__ import annotations

import importlib

from jobs.model_params import PARAMS_BY_MODEL, Params
from trainers.generative_model import GenerativeModel, ImageShape

# name -> module under trainers.models whose MODEL is the class; imported on first use so that
# building one model does not import the other seven.
_MODULES = {name: f"trainers.models.{name}" for name in PARAMS_BY_MODEL}


def model_class(name: str) -> type[GenerativeModel]:
    if name not in _MODULES:
        raise KeyError(f"model.type: unknown model {name!r}; one of {', '.join(_MODULES)}")
    return importlib.import_module(_MODULES[name]).MODEL


def build_model(name: str, params: Params, shape: ImageShape, num_classes: int) -> GenerativeModel:
    return model_class(name)(params, shape, num_classes)
