"""Small programs that tests/test_distributed.py runs under ``mpiexec -n 2`` (and serially).

    python tests/mpi_programs.py exact OUT.npz              # 3 SGD steps, weights saved by rank 0
    mpiexec -n 2 python tests/mpi_programs.py exact OUT.npz  # the same steps, data-parallel
    mpiexec -n 2 python tests/mpi_programs.py raise          # rank 1 raises at step 2
    mpiexec -n 2 python tests/mpi_programs.py nan            # rank 1's loss is NaN at step 2
    mpiexec -n 2 python tests/mpi_programs.py exit           # rank 1 calls sys.exit(3) at step 2
    mpiexec -n 2 python tests/mpi_programs.py exit0          # all ranks train, then sys.exit(0)
    mpiexec -n 2 python tests/mpi_programs.py uneven OUT.npz # 7 samples split 4/3, 5/2, 7/0

The model is a tiny conv net WITH dropout (so the test also covers the masks), trained on
24 random 8x8 RGB images in global batches of 8: each of 2 ranks takes 4 images per step.
Not a test module itself (no test_ prefix): pytest does not collect it.
"""

import os
import sys
from collections import OrderedDict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tinynet as tn  # noqa: E402
import tinynet.distributed as dist  # noqa: E402
import tinynet.functional as F  # noqa: E402
from tinynet import data as tdata, nn  # noqa: E402
from tinynet.optim import SGD  # noqa: E402

GLOBAL_BATCH = 8
STEPS = 3
SEED = 7


def tiny_model(seed):
    """conv 3->8 (3x3) -> ReLU -> pool 2 -> fc 128->32 -> ReLU -> dropout 0.5 -> fc 32->5."""
    rng = np.random.default_rng(seed)
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(3, 8, 3, padding=1, rng=rng), relu1=nn.ReLU(), pool=nn.MaxPool2d(2, 2),
        flat=nn.Flatten(), fc1=nn.Linear(8 * 4 * 4, 32, rng=rng), relu2=nn.ReLU(),
        drop=nn.Dropout(0.5), fc2=nn.Linear(32, 5, rng=rng)))


def tiny_data():
    """24 random images (24, 8, 8, 3) uint8 with labels 0..4."""
    rng = np.random.default_rng(123)
    images = rng.integers(0, 256, (24, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, 5, 24)
    return tdata.ArrayDataset(images, labels, [f"c{k}" for k in range(5)])


def to_input(images):
    """uint8 (N, 8, 8, 3) -> float32 (N, 3, 8, 8) in [-0.5, 0.5]."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / 255 - 0.5


def train_steps(fail=None):
    """STEPS steps of SGD over the global batches; returns (state_dict, global mean losses).

    fail: None, or ("raise" | "nan" | "exit", rank): that rank fails at step 2 (the others are
    by then waiting for it in the gradient Allreduce).
    """
    if dist.init() > 1:
        dist.set_threads_per_rank()     # 2 ranks on 2 cores: 1 thread each
    # each rank starts from DIFFERENT random weights: broadcast_parameters must make them equal
    model = tiny_model(SEED + dist.rank())
    dist.broadcast_parameters(model)
    tn.manual_seed(SEED)            # the dropout generator: the same on every rank
    optimizer = SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    loader = tdata.DataLoader(tiny_data(), GLOBAL_BATCH, transform=None, shuffle=True, seed=SEED,
                              prefetch=0, rank=dist.rank(), world_size=dist.world_size())
    losses = []
    for step, (images, labels, _) in enumerate(loader.epoch_batches(0)):
        if step == STEPS:
            break
        x = to_input(images)
        if fail is not None and step == 2 and dist.rank() == fail[1]:
            if fail[0] == "raise":
                raise RuntimeError("an error injected by the test")
            if fail[0] == "exit":
                sys.exit(3)
            x[0, 0, 0, 0] = np.nan
        with dist.dropout_rows(GLOBAL_BATCH):
            loss = F.cross_entropy(model(tn.tensor(x)), labels)
        value = loss.item()
        if not np.isfinite(value):
            dist.abort(f"loss became {value} at step {step}")
        optimizer.zero_grad()
        loss.backward()
        dist.allreduce_gradients(model.parameters())
        optimizer.step()
        losses.append(float(dist.allreduce_sum(value)) / dist.world_size())
    return model.state_dict(), losses


def ranks_agree(state):
    """Largest difference between this rank's weights and rank 0's, over all ranks (0.0 if
    every copy is bit-identical)."""
    arrays = [v.copy() for v in state.values()]
    dist.broadcast_arrays(arrays)                      # rank 0's weights
    diff = max(float(np.abs(a - v).max()) for a, v in zip(arrays, state.values()))
    return float(dist.allreduce_sum(diff))


def uneven_gradients():
    """The averaged gradient of a float64 linear model when the ranks hold different numbers of
    the 7 samples (4/3, 5/2 and 7/0 over 2 ranks; allreduce_gradients(count=...)), and of an
    extra parameter that no rank's loss uses (its gradient must stay None). Returns a dict
    name -> gradient per split, as rank 0 has them."""
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((7, 6)), rng.integers(0, 3, 7)
    out = {}
    for first in (4, 5, 7):
        lin = nn.Linear(6, 3, rng=np.random.default_rng(1), dtype=np.float64)
        unused = nn.Parameter(np.ones(2))
        mine = slice(0, first) if dist.rank() == 0 else slice(first, 7)
        if len(x[mine]):
            F.cross_entropy(lin(tn.tensor(x[mine])), y[mine]).backward()
        dist.allreduce_gradients(lin.parameters() + [unused], count=len(x[mine]))
        out[f"w{first}"], out[f"b{first}"] = lin.weight.grad, lin.bias.grad
        out[f"unused_is_none{first}"] = np.array(unused.grad is None)
    return out


def update_in_backward_refused():
    """SGD(update_in_backward=True) updates a weight with this rank's own gradient in backward:
    allreduce_gradients must refuse on every rank together (after its first, small collective), not
    average the rest.
    Returns the error message, or '' if none came."""
    lin = nn.Linear(6, 3, rng=np.random.default_rng(1))
    opt = SGD(lin.parameters(), lr=0.1, update_in_backward=True)  # noqa: F841  (kept alive: it updates in backward)
    x = np.random.default_rng(dist.rank()).standard_normal((4, 6)).astype(np.float32)
    F.cross_entropy(lin(tn.tensor(x)), np.arange(4) % 3).backward()
    try:
        dist.allreduce_gradients(lin.parameters())
    except RuntimeError as e:
        return str(e)
    return ""


def main(argv):
    mode = argv[0]
    if mode == "in_backward":
        message = update_in_backward_refused()
        dist.barrier()  # both ranks got here: nobody waits in a collective
        if dist.is_main():
            with open(argv[1], "w") as f:
                f.write(message)
        return
    if mode == "uneven":
        grads = uneven_gradients()
        if dist.is_main():
            np.savez(argv[1], **grads)
        return
    if mode == "exact":
        state, losses = train_steps()
        spread = ranks_agree(state)
        if dist.is_main():
            np.savez(argv[1], losses=np.array(losses), spread=np.array(spread),
                     world_size=np.array(dist.world_size()), **state)
    elif mode in ("raise", "nan", "exit"):
        train_steps(fail=(mode, 1))
    elif mode == "exit0":
        train_steps()
        sys.exit(0)
    else:
        raise SystemExit(f"mpi_programs.py: unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
