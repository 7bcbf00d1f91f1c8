"""Registered baselines, one module each; importing this package registers them."""

from baselines import lf_dnn  # noqa: F401
