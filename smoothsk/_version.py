"""The library version, in a module of its own so that every part can import it."""

__version__ = "0.2.0.dev0"
