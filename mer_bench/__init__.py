"""mer-bench: robust multimodal emotion recognition under missing modalities and shift."""

__version__ = "0.1.0"
