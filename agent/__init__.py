"""fixture-agent: the station agent of an in-line firmware programming fixture."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fixture-agent")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
