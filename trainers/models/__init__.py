"""The model zoo, registered by the names job specs use (`model.type`)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from trainers.generative_model import GenerativeModel, ImageShape

if TYPE_CHECKING:  # see trainers/generative_model.py
    from jobs.model_params import Params

# The names jobs/model_params.py registers, spelled again (tests/test_security.py checks that
# they agree) so that a model builds without importing the job spec's pydantic: bench/
# gpu_bench.py runs on a GPU machine that has torch alone.
MODEL_NAMES = (
    "pixelcnn",
    "gated_pixelcnn",
    "pixelcnn_pp",
    "pixelrnn_row",
    "pixelrnn_diag",
    "autoencoder",
    "vae",
    "dcgan",
)
# name -> module under trainers.models whose MODEL is the class; imported on first use so that
# building one model does not import the other seven.
_MODULES = {name: f"trainers.models.{name}" for name in MODEL_NAMES}


def model_class(name: str) -> type[GenerativeModel]:
    if name not in _MODULES:
        raise KeyError(f"model.type: unknown model {name!r}; one of {', '.join(_MODULES)}")
    return importlib.import_module(_MODULES[name]).MODEL


def build_model(name: str, params: Params, shape: ImageShape, num_classes: int) -> GenerativeModel:
    return model_class(name)(params, shape, num_classes)
