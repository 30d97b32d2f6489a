"""rcic: learn which siRNA was applied to cells from 6-channel microscopy in the RxRx1 layout."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rcic")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"
