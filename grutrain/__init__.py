"""grutrain: a command-line trainer for sequence models built around a GRU written from its equations."""

__version__ = "0.1.0"
