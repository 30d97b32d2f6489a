"""rcic: learn which siRNA was applied to cells from 6-channel microscopy in the RxRx1 layout.

The package is laid out by stage, each layer importing only from those below it
(tests/test_code_rules.py holds it to that): at the bottom ``errors``, ``fileio``, ``metrics`` and
``parallel``; then ``data`` (metadata, plate rules, images, the store, cells, segmentation, profile
tables), ``synthetic`` (the simulated screen and its checks), ``training`` (config, models,
batches, the loop, runs), ``inference`` (prediction with TTA, embeddings, logits files,
temperatures), ``plates`` (plate post-processing and submissions), ``profiling`` (corrections,
features, heads, profiles and their metrics); on top ``cli``, ``demo``, ``pseudo`` and ``report``.

The main entry points are importable from here; they load on first use, so ``import rcic`` stays
light (the command line's ``rcic --help`` imports nothing heavy either)::

    rcic.load_metadata, rcic.wells_of      the dataset's tables (rcic.data.metadata)
    rcic.discover_groups                   siRNA groups and plate orders (rcic.data.rules)
    rcic.generate                          a synthetic screen (rcic.synthetic.synth)
    rcic.pack, rcic.SiteStore              the packed image store (rcic.data.packing, rcic.data.store)
    rcic.load_config, rcic.train           training (rcic.training.config, rcic.training.train)
    rcic.treatment_log_probs               logits -> per-well log-probabilities (rcic.plates.postprocess)
    rcic.make_submission, rcic.SubmitOptions   the plate stages in memory (rcic.plates.submit)
"""

from importlib import import_module

_ENTRY_POINTS = {
    "load_metadata": "rcic.data.metadata",
    "wells_of": "rcic.data.metadata",
    "discover_groups": "rcic.data.rules",
    "generate": "rcic.synthetic.synth",
    "pack": "rcic.data.packing",
    "SiteStore": "rcic.data.store",
    "load_config": "rcic.training.config",
    "train": "rcic.training.train",
    "treatment_log_probs": "rcic.plates.postprocess",
    "make_submission": "rcic.plates.submit",
    "SubmitOptions": "rcic.plates.submit",
}
__all__ = ["__version__", *_ENTRY_POINTS]


def __getattr__(name: str):
    if name == "__version__":  # looked up on use: importing importlib.metadata slows every command
        return _version()
    if name in _ENTRY_POINTS:
        return getattr(import_module(_ENTRY_POINTS[name]), name)
    raise AttributeError(f"module 'rcic' has no attribute {name!r}")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rcic")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "0+unknown"
