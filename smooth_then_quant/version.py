"""The package version, at the bottom of the import graph so any layer may read it."""
__version__ = "0.2.0"
