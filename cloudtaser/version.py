"""The installed cloudtaser's version: pyproject.toml's, the one place it is written."""

from importlib.metadata import version

__version__ = version("cloudtaser")
