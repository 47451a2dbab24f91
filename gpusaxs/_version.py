"""The package version (pyproject.toml's [project] version), in a leaf module."""

__version__ = "0.1.0"
