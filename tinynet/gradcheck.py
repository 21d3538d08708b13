"""Numerical gradient checks: is an op's backward right?

Central differences, (f(x + eps) - f(x - eps)) / (2 eps), approximate each
partial derivative with error O(eps^2); in float64 with eps ~ 1e-6 they
agree with a correct analytic gradient to ~1e-8.  The output is reduced to a
scalar with fixed random weights R (loss = sum(f(x) * R)), so every output
element takes part.

``gradcheck`` compares element by element (all elements for small inputs,
a seeded random subset for big ones) and also along one random direction d:
<grad, d> against (f(x + eps d) - f(x - eps d)) / (2 eps).
"""

import numpy as np

from .autograd import Tensor, no_grad


def _relative_error(a, n, tiny=1e-12):
    return np.abs(a - n) / np.maximum(np.maximum(np.abs(a), np.abs(n)), tiny)


def gradcheck(fn, inputs, eps=1e-6, rtol=1e-5, atol=1e-7, max_checks=200, seed=0):
    """Check ``fn``'s backward against central differences.

    fn: takes tensors (one per array in ``inputs``) and returns a tensor.
    inputs: float64 NumPy arrays.  Returns the largest relative error seen;
    raises AssertionError naming the input and element on a mismatch.
    """
    rng = np.random.default_rng(seed)
    for i, a in enumerate(inputs):
        if np.asarray(a).dtype != np.float64:  # float32's rounding would swamp the differences
            raise TypeError(f"gradcheck: input {i} must be float64, got {np.asarray(a).dtype}")
    inputs = [np.array(a, dtype=np.float64) for a in inputs]  # copies: the checks nudge them in place

    tensors = [Tensor(a, requires_grad=True) for a in inputs]
    out = fn(*tensors)
    weights = rng.standard_normal(out.shape)
    (out * Tensor(weights)).sum().backward()
    analytic = [t.grad if t.grad is not None else np.zeros_like(t.data) for t in tensors]

    def loss_at(arrays):
        with no_grad():
            return float((fn(*[Tensor(a) for a in arrays]).data * weights).sum())

    worst = 0.0
    for i, a in enumerate(inputs):
        flat = a.reshape(-1)
        picks = np.arange(flat.size) if flat.size <= max_checks else rng.choice(flat.size, max_checks, replace=False)
        numeric = np.empty(len(picks))
        for j, idx in enumerate(picks):
            old = flat[idx]
            flat[idx] = old + eps
            up = loss_at(inputs)
            flat[idx] = old - eps
            down = loss_at(inputs)
            flat[idx] = old
            numeric[j] = (up - down) / (2 * eps)
        got = analytic[i].reshape(-1)[picks]
        bad = ~np.isclose(got, numeric, rtol=rtol, atol=atol)
        if bad.any():
            k = int(np.argmax(bad))
            raise AssertionError(
                f"gradcheck: input {i} (shape {a.shape}) element {np.unravel_index(picks[k], a.shape)}: "
                f"analytic {got[k]:.10g} vs numeric {numeric[k]:.10g} "
                f"({int(bad.sum())} of {len(picks)} checked elements differ)"
            )
        worst = max(worst, float(_relative_error(got, numeric, tiny=atol).max(initial=0.0)))

    # one random direction through all inputs at once
    dirs = [rng.standard_normal(a.shape) for a in inputs]
    up = loss_at([a + eps * d for a, d in zip(inputs, dirs)])
    down = loss_at([a - eps * d for a, d in zip(inputs, dirs)])
    numeric = (up - down) / (2 * eps)
    predicted = sum(float((g * d).sum()) for g, d in zip(analytic, dirs))
    if not np.isclose(predicted, numeric, rtol=rtol, atol=atol * 10):
        raise AssertionError(f"gradcheck: directional derivative {predicted:.10g} vs numeric {numeric:.10g}")
    return worst
