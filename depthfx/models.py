"""Build a model from a command-line spec; weights come only from a local file.

Specs: ``torchvision:NAME`` (``torchvision.models.get_model(NAME, weights=None)``),
``timm:NAME`` (``timm.create_model(NAME, pretrained=False)``) and ``path/to/file.py:factory``
(a callable in that file returning an ``nn.Module``). Nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from depthfx.errors import DepthFXError

SPEC_HELP = "torchvision:NAME, timm:NAME or path/to/file.py:factory"


def load_model(spec: str, weights: str | None = None) -> nn.Module:
    """The model named by ``spec``, in eval mode, with ``weights`` (a local state_dict file)."""
    source, sep, name = spec.partition(":")
    if not sep or not name:
        raise DepthFXError(f"bad model spec {spec!r}: expected {SPEC_HELP}")
    if source == "torchvision":
        model = _torchvision(name)
    elif source == "timm":
        model = _timm(name)
    else:
        path, _, factory = spec.rpartition(":")
        model = _from_file(Path(path), factory)
    if weights is not None:
        _load_weights(model, Path(weights))
    return model.eval()


def _torchvision(name: str) -> nn.Module:
    import torchvision

    if name not in torchvision.models.list_models():
        raise DepthFXError(
            f"torchvision has no model {name!r} (see torchvision.models.list_models())"
        )
    return torchvision.models.get_model(name, weights=None)


def _timm(name: str) -> nn.Module:
    try:
        import timm
    except ImportError as err:
        raise DepthFXError("timm models need the timm package: pip install timm") from err
    if not timm.is_model(name):
        raise DepthFXError(f"timm has no model {name!r} (see timm.list_models())")
    return timm.create_model(name, pretrained=False)


def _from_file(path: Path, factory: str) -> nn.Module:
    if path.suffix != ".py" or not factory:
        raise DepthFXError(f"bad model spec '{path}:{factory}': expected {SPEC_HELP}")
    if not path.is_file():
        raise DepthFXError(f"model file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"depthfx_user_model_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise DepthFXError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = getattr(module, factory, None)
    if not callable(fn):
        raise DepthFXError(f"{path} has no callable {factory!r}")
    model = fn()
    if not isinstance(model, nn.Module):
        raise DepthFXError(f"{path}:{factory}() returned {type(model).__name__}, not an nn.Module")
    return model


def _load_weights(model: nn.Module, path: Path) -> None:
    """Load a state_dict (or a checkpoint dict holding one under state_dict/model) strictly."""
    if not path.is_file():
        raise DepthFXError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise DepthFXError(f"cannot read weights {path}: {err}") from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        first = str(err).strip().splitlines()[0]
        raise DepthFXError(f"weights {path} do not fit the model: {first}") from err
