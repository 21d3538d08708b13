import numpy as np
import pytest
from hypothesis import settings

# heavy ops draw few examples; the whole suite should stay within a few minutes on 2 cores
settings.register_profile("default", max_examples=25, deadline=None, derandomize=True)
settings.load_profile("default")


def shuffled_linspace(shape, rng, lo=-1.0, hi=1.0):
    """Distinct values in random order: no ties for max-pool, no zeros for ReLU."""
    n = int(np.prod(shape))
    values = np.linspace(lo, hi, n) + (hi - lo) / (4 * max(n, 1))  # keeps 0 out of the grid
    return rng.permutation(values).reshape(shape)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def load_example(name):
    """examples/<name>.py imported as a module (the examples are scripts, not a package)."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", name + ".py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
