"""The package version, in a module of its own so that a plugin can name it without importing ``logbus``
(whose lazy names import the plugins back)."""

__version__ = "0.1.0"
