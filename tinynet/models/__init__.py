"""Example networks built from tinynet layers."""

from .alexnet import AlexNet, BIAS_INITS  # noqa: F401
