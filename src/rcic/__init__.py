"""rcic: learn which siRNA was applied to cells from 6-channel microscopy in the RxRx1 layout.

The main entry points are importable from here; they load on first use, so ``import rcic`` stays
light (the command line's ``rcic --help`` imports nothing heavy either)::

    rcic.load_metadata, rcic.wells_of      the dataset's tables (rcic.metadata)
    rcic.discover_groups                   siRNA groups and plate orders (rcic.rules)
    rcic.generate                          a synthetic screen (rcic.synth)
    rcic.pack, rcic.SiteStore              the packed image store (rcic.packing, rcic.store)
    rcic.load_config, rcic.train           training (rcic.config, rcic.train)
    rcic.treatment_log_probs               logits -> per-well log-probabilities (rcic.plates)
    rcic.make_submission, rcic.SubmitOptions   the plate stages in memory (rcic.submit)
"""

from importlib import import_module

_ENTRY_POINTS = {
    "load_metadata": "rcic.metadata",
    "wells_of": "rcic.metadata",
    "discover_groups": "rcic.rules",
    "generate": "rcic.synth",
    "pack": "rcic.packing",
    "SiteStore": "rcic.store",
    "load_config": "rcic.config",
    "train": "rcic.train",
    "treatment_log_probs": "rcic.plates",
    "make_submission": "rcic.submit",
    "SubmitOptions": "rcic.submit",
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
