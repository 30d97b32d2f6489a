"""The run folder: one home for what a training run leaves and what later commands read back.

::

    RUN/config.yaml        the resolved configuration
    RUN/env.json           git revision, library versions, device, world size, store
    RUN/split.json         the experiments held out for validation and those trained on
    RUN/train.log          the log
    RUN/metrics.jsonl      one JSON object per epoch
    RUN/checkpoints/{last,best}.pt   model, optimiser, scheduler, epoch, RNG states, config

`predict` and `embed` read the held-out experiments from ``split.json`` rather than recomputing the
folds, so a later change of the fold rule cannot move a run's validation set. Checkpoints carry a
format number; their stored config is read tolerantly: keys this rcic does not know (written by a
newer one) are dropped with a warning, keys it added since take their defaults.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import random
import shutil
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rcic import layout
from rcic.errors import InputError, StoreError, TrainingError
from rcic.fileio import atomic_path, atomic_text
from rcic.training.config import FIELDS, ConfigError, TrainConfig, save_config, to_dict
from rcic.training.models import RcicModel, build_model, load_torch_file

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 2
"""1: rcic before the run-folder module (no ``format`` key); 2: adds ``format``."""


@dataclass(frozen=True)
class RunFolder:
    """Paths of one run folder, and reading and writing its records."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    config = property(lambda self: self.root / "config.yaml")
    env = property(lambda self: self.root / "env.json")
    split = property(lambda self: self.root / "split.json")
    log = property(lambda self: self.root / "train.log")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    checkpoints = property(lambda self: self.root / "checkpoints")

    def checkpoint(self, which: str = "best") -> Path:
        """``best`` or ``last`` of this run, or any other path as given."""
        return self.checkpoints / f"{which}.pt" if which in ("best", "last") else Path(which)

    def checkpoint_digest(self, which: str = "best") -> str:
        """The first 16 hex digits of the checkpoint file's sha256: one model, whichever name or
        machine reads it (what joins the parts of one prediction)."""
        h = hashlib.sha256()
        with open(self.checkpoint(which), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()[:16]

    def start(self, cfg: TrainConfig, env: dict, split: dict) -> None:
        """Write the records of a new run (each atomically) and an empty metrics file."""
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.config)
        atomic_text(self.env, json.dumps(env, indent=1))
        atomic_text(self.split, json.dumps(split, indent=1))
        atomic_text(self.metrics, "")

    def read_config(self) -> TrainConfig:
        """The run's resolved config, read tolerantly (see :func:`config_from_record`)."""
        import yaml

        try:
            values = yaml.safe_load(self.config.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise InputError(f"{self.config}: cannot read the run's config ({e})") from None
        if not isinstance(values, dict):
            raise InputError(f"{self.config}: a config is a mapping of key: value")
        return config_from_record(values, str(self.config))

    def record_epoch(self, row: dict) -> None:
        """Log an epoch's metrics in one line and append them to metrics.jsonl."""
        msg = f"epoch {row['epoch']}: loss {row['loss']:.4f}, {row['images_per_s']:.1f} images/s"
        if "val" in row:
            v = row["val"]
            per_type = ", ".join(f"{k} {a:.3f}" for k, a in v["cell_type"].items())
            msg += f", held-out accuracy {v['overall']:.3f} ({per_type})"
        log.info(msg)
        with open(self.metrics, "a") as f:
            f.write(json.dumps(row) + "\n")

    def held_out(self) -> list[str] | None:
        """The experiments this run held out for validation, as recorded when it trained; None
        for a folder without a record (then the folds are recomputed from the config)."""
        for path, key in ((self.split, "held_out_experiments"), (self.env, "held_out_experiments")):
            if path.is_file():
                try:
                    value = json.loads(path.read_text()).get(key)
                except (OSError, ValueError, AttributeError) as e:
                    raise InputError(f"{path}: cannot read the run's record ({e})") from None
                if value is not None:
                    return [str(e) for e in value]
        return None

    def store_kind(self) -> str | None:
        """The kind of store the run trained on (sites or cells); None when not recorded."""
        if not self.env.is_file():
            return None
        try:
            return json.loads(self.env.read_text()).get("store_kind")
        except (OSError, ValueError, AttributeError) as e:
            raise InputError(f"{self.env}: cannot read the run's record ({e})") from None

    def check_store_kind(self, kind: str, store: str | Path) -> None:
        """Raise StoreError unless `store` (of `kind`) is of the kind this run trained on."""
        trained_on = self.store_kind()
        if trained_on is not None and trained_on != kind:
            how = " (cut one with `rcic cells`)" if trained_on == "cells" else ""
            raise StoreError(
                f"{self.root} started on a {trained_on} store; {store} is a {kind} store: "
                f"give it a {trained_on} store{how}"
            )

    def save_checkpoint(self, which: str, state: dict) -> None:
        """Write to a temporary name, then rename: a crash never leaves a half-written checkpoint."""
        with atomic_path(self.checkpoint(which)) as tmp:
            torch.save(state, tmp)

    def copy_checkpoint(self, source: str, which: str) -> None:
        """Make checkpoint `which` the same file as `source`: a hard link where the file system
        has them (no second write of the same bytes), else a copy; renamed into place either way."""
        with atomic_path(self.checkpoint(which)) as tmp:
            tmp.unlink(missing_ok=True)
            try:
                os.link(self.checkpoint(source), tmp)
            except OSError:
                shutil.copyfile(self.checkpoint(source), tmp)


@contextmanager
def run_log(folder: RunFolder, enabled: bool):
    """Copy rcic's log records into RUN/train.log for the duration of the run."""
    if not enabled:
        yield
        return
    handler = logging.FileHandler(folder.log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("rcic")
    root.addHandler(handler)
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=5,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device: torch.device, world: int) -> dict:
    import timm

    return {
        "git": git_revision(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "device": str(device),
        "world_size": world,
        "cpu_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }


# --- checkpoints ------------------------------------------------------------------------------


def rng_state() -> dict:
    """RNG states as plain types and tensors, so checkpoints load with torch.load(weights_only=True)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def training_state(model, opt, sched, epoch: int, best: float, cfg: TrainConfig) -> dict:
    """Everything a resumed run needs, in types torch.load(weights_only=True) accepts."""
    return {
        "format": CHECKPOINT_FORMAT,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "epoch": epoch,
        "best": best,
        "config": to_dict(cfg),
        "rng": rng_state(),
        "n_classes": layout.N_CLASSES,
    }


def read_checkpoint(path: Path, device="cpu") -> dict:
    """A checkpoint's contents, refusing files that are not rcic checkpoints this rcic can read."""
    state = load_torch_file(path, "checkpoint", device)
    if not {"model", "config"} <= set(state):
        raise InputError(f"{path}: not an rcic checkpoint (it has no model and config)")
    version = state.get("format", 1)
    if not isinstance(version, int) or version > CHECKPOINT_FORMAT:
        raise InputError(
            f"{path}: checkpoint format {version!r}, newer than this rcic reads "
            f"({CHECKPOINT_FORMAT}); upgrade rcic"
        )
    return state


def restore(path: Path, model, opt, sched, device) -> tuple[int, float]:
    """Load a training state into model, optimiser and scheduler; set the RNGs; (epoch, best)."""
    if not path.exists():
        raise TrainingError(f"--resume: {path} does not exist; start without --resume")
    state = read_checkpoint(path, device)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    log.info("resumed %s at epoch %d", path, state["epoch"])
    return int(state["epoch"]), float(state["best"])


def config_from_record(values: dict, where: str) -> TrainConfig:
    """A TrainConfig from a stored config: unknown keys (from a newer rcic) are dropped with a
    warning naming them; keys added since the record was written take their defaults."""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        log.warning("%s: ignoring config key(s) this rcic does not know: %s", where, unknown)
    known = {k: v for k, v in values.items() if k in FIELDS}
    missing = sorted(set(FIELDS) - set(known))
    if missing:
        log.info("%s: config key(s) not recorded, defaults used: %s", where, missing)
    try:
        return TrainConfig(**known)
    except (TypeError, ConfigError) as e:
        raise InputError(f"{where}: stored config is not valid ({e})") from None


def load_checkpoint(
    run: str | Path, checkpoint: str = "best", device: str | torch.device = "cpu"
) -> tuple[RcicModel, TrainConfig]:
    """The model (eval mode, on `device`) and config of a run's checkpoint (`best`, `last` or a path)."""
    path = RunFolder(run).checkpoint(checkpoint)
    state = read_checkpoint(path)
    values = {**state["config"], "weights": None, "pretrained": None}  # the checkpoint holds them
    cfg = config_from_record(values, str(path))
    model = build_model(cfg)
    model.load_state_dict(state["model"])
    if "global_stats" in state:  # normalisation=global: the statistics of the training pool
        model.global_stats = state["global_stats"].numpy()
    return model.to(device).eval(), cfg
