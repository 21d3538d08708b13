"""Example networks built from tinynet layers."""

from .alexnet import AlexNet, BIAS_INITS, he_weight_std  # noqa: F401
from .towers import TwoTowerAlexNet  # noqa: F401,E402
