"""Datasets named on the command line, for calibration (proxy) and fine-tuning (finetune).

Specs, each optionally sliced with ``[a:b]`` (e.g. ``fashion-mnist[:1000]``):

* ``digits``: scikit-learn's ``load_digits`` (1797 8×8 grey images, 10 classes, in [0, 1]);
* ``fashion-mnist`` / ``fashion-mnist-test``: the Debian package ``dataset-fashion-mnist``
  (60,000 / 10,000 28×28 grey images, 10 classes, in [0, 1]);
* a folder with one sub-folder of images per class (sorted names are the labels 0, 1, …);
* a ``.pt`` file (a tensor of inputs, an (inputs, labels) pair or a dict with ``x``/``y``) or an
  ``.npz`` file (arrays ``x``/``y``, else the first two arrays).

``load_dataset(spec, input_shape=(C, H, W))`` fits the images to the model: grey replicated to
3 channels, resized (bilinear, antialiased) to H×W, then ``(x − mean) / std`` if given.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from depthfx.errors import DepthFXError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_SLICE = re.compile(r"^(?P<name>.*?)\[(?P<a>-?\d*):(?P<b>-?\d*)\]$")


def load_dataset(
    spec: str,
    *,
    input_shape: tuple[int, ...] | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> TensorDataset:
    """The dataset named by ``spec`` as a TensorDataset of (float inputs, int64 labels); a
    tensor file without labels gives label −1 everywhere (fine for the proxy)."""
    name, sl = spec, slice(None)
    match = _SLICE.match(spec)
    if match:
        name = match["name"]
        sl = slice(int(match["a"]) if match["a"] else None, int(match["b"]) if match["b"] else None)
    x, y = _load(name)
    x, y = x[sl], y[sl]
    if len(x) == 0:
        raise DepthFXError(f"dataset {spec!r} is empty")
    if input_shape is not None:
        x = fit_images(x, tuple(input_shape))
    if mean is not None or std is not None:
        m = torch.tensor(mean or (0.0,)).view(1, -1, 1, 1)
        s = torch.tensor(std or (1.0,)).view(1, -1, 1, 1)
        x = (x - m) / s
    return TensorDataset(x.contiguous(), y.long())


def fit_images(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Replicate grey to ``shape[0]`` channels and resize to ``shape[1:]``."""
    c, *hw = shape
    if x.shape[1] != c:
        if x.shape[1] != 1:
            raise DepthFXError(f"cannot turn {x.shape[1]}-channel images into {c} channels")
        x = x.expand(-1, c, -1, -1)
    if list(x.shape[2:]) != hw:
        x = F.interpolate(x, size=tuple(hw), mode="bilinear", antialias=True, align_corners=False)
    return x


def _load(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if name == "digits":
        return _digits()
    if name in ("fashion-mnist", "fashion-mnist-test"):
        return _fashion_mnist("t10k" if name.endswith("test") else "train")
    path = Path(name)
    if path.is_dir():
        return _image_folder(path)
    if path.suffix in (".pt", ".pth") and path.is_file():
        return _tensor_file(path)
    if path.suffix == ".npz" and path.is_file():
        return _npz_file(path)
    raise DepthFXError(
        f"unknown dataset {name!r}: use digits, fashion-mnist, fashion-mnist-test, an image "
        "folder (one sub-folder per class) or a .pt/.npz file"
    )


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DepthFXError(
            "dataset 'digits' needs scikit-learn: pip install scikit-learn"
        ) from None
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return x, torch.tensor(d.target)


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        raw = f.read()
    nd = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(nd)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * nd).reshape(dims)


def _fashion_mnist(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    images = FASHION_MNIST_DIR / f"{split}-images-idx3-ubyte.gz"
    labels = FASHION_MNIST_DIR / f"{split}-labels-idx1-ubyte.gz"
    if not images.is_file() or not labels.is_file():
        raise DepthFXError(
            f"Fashion-MNIST not found under {FASHION_MNIST_DIR}: install it with "
            "`apt-get install -y dataset-fashion-mnist` (Debian/Ubuntu)"
        )
    x = torch.from_numpy(_idx(images).copy()).float().unsqueeze(1) / 255.0
    return x, torch.from_numpy(_idx(labels).astype(np.int64))


def _image_folder(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image

    classes = sorted(p for p in path.iterdir() if p.is_dir())
    if not classes:
        raise DepthFXError(f"{path}: no class sub-folders (expected {path}/CLASS/IMAGE.png)")
    xs: list[torch.Tensor] = []
    ys: list[int] = []
    size: tuple[int, int] | None = None
    for label, folder in enumerate(classes):
        for file in sorted(folder.iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            img = Image.open(file).convert("RGB")
            size = size or img.size
            if img.size != size:
                img = img.resize(size, Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.float32) / 255.0
            xs.append(torch.from_numpy(arr).permute(2, 0, 1))
            ys.append(label)
    if not xs:
        raise DepthFXError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in its sub-folders")
    return torch.stack(xs), torch.tensor(ys)


def _pair(x: Any, y: Any, where: Path) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).float()
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4:
        raise DepthFXError(f"{where}: inputs must be (N, C, H, W), got {tuple(x.shape)}")
    y = torch.full((len(x),), -1) if y is None else torch.as_tensor(np.asarray(y)).long()
    if len(y) != len(x):
        raise DepthFXError(f"{where}: {len(x)} inputs but {len(y)} labels")
    return x, y


def _tensor_file(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, torch.Tensor):
        return _pair(obj, None, path)
    if isinstance(obj, tuple | list) and len(obj) == 2:
        return _pair(obj[0], obj[1], path)
    if isinstance(obj, dict) and "x" in obj:
        return _pair(obj["x"], obj.get("y"), path)
    raise DepthFXError(f"{path}: expected a tensor, an (x, y) pair or a dict with 'x' (and 'y')")


def _npz_file(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    with np.load(path) as z:
        names = list(z.files)
        if "x" in names:
            return _pair(z["x"], z["y"] if "y" in names else None, path)
        if not names:
            raise DepthFXError(f"{path}: no arrays")
        return _pair(z[names[0]], z[names[1]] if len(names) > 1 else None, path)


__all__ = ["FASHION_MNIST_DIR", "fit_images", "load_dataset"]
