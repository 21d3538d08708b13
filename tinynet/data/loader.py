"""DataLoader: reproducible shuffled batches, prepared in a background thread.

    loader = DataLoader(train, batch_size=128, transform=TrainTransform(mean=train.channel_mean()))
    for epoch in range(start_epoch, 90):
        for x, y, idx in loader.epoch_batches(epoch, start_step=0):
            ...   # x (128, 3, 227, 227) float32, y (128,) int64, idx (128,) int64

Two ways to iterate: `loader.epoch_batches(epoch)` names the epoch (what a resumable training
loop wants); `for x, y, idx in loader` takes the next epoch each pass (0, 1, 2, ...; set_epoch
chooses where to continue), so the order and the augmentations change from pass to pass.

Reproducibility: the order of epoch e is a permutation drawn from (seed, epoch) only, and the
transform draws each sample's augmentation from (seed, epoch, sample index) only. So batch k of
epoch e is the same whether the run started at epoch 0 or resumed at (e, k), and whatever
`prefetch` is.

Overlap: one daemon thread prepares the next `prefetch` batches while the caller computes on the
current one (NumPy releases the GIL while it copies and converts arrays, so the two really run
at the same time). The thread stops when the loop ends, breaks, or the generator is closed or
garbage-collected; an exception inside it is raised again in the caller's loop, with the
traceback of where it happened.

Data parallelism: with world_size W, each global batch of batch_size samples is cut into W
consecutive slices of batch_size / W; rank r gets slice r. All ranks see the same global batches
(same seed), so together they cover exactly what one process would.
"""

import queue
import threading

import numpy as np

from .dataset import check_int

# First word of the shuffle generator's key (see transforms._AUGMENT_STREAM).
_SHUFFLE_STREAM = 0x53485546


class DataLoader:
    """Iterate over a data set in (optionally shuffled) batches with a transform applied.

    Args:
        dataset: ArrayDataset (anything with .images (N, H, W, C) uint8 and .labels (N,) int64).
        batch_size: samples per GLOBAL batch (all ranks together), >= 1.
        transform: callable (images uint8 (B, H, W, C), indices (B,) int64, epoch int) -> x,
            e.g. TrainTransform or EvalTransform; None yields the raw uint8 images.
        shuffle: True: a new random order every epoch, from (seed, epoch). False: 0..N-1.
        seed: int >= 0 for the shuffle.
        drop_last: True: drop the final incomplete batch (every batch then has batch_size
            samples). False: keep it; with world_size > 1 it is split with np.array_split, so
            local sizes differ by at most one and may be 0 (every rank still takes the step:
            pass its size to distributed.allreduce_gradients(count=...), which then weighs
            each rank's mean gradient by its samples).
        prefetch: number of batches prepared ahead in the background thread; 0 prepares each
            batch in the caller's thread (simplest to debug).
        rank, world_size: this process's slice of every global batch, 0 <= rank < world_size;
            batch_size must be divisible by world_size.

    len(loader) is the number of batches (steps) per epoch, the same on every rank.
    """

    def __init__(self, dataset, batch_size, transform=None, shuffle=True, seed=0, drop_last=True,
                 prefetch=2, rank=0, world_size=1):
        func = "DataLoader"
        if not (hasattr(dataset, "images") and hasattr(dataset, "labels")):
            raise TypeError(f"{func}: dataset must have .images and .labels (an ArrayDataset), "
                            f"got {type(dataset).__name__}")
        self.dataset = dataset
        self.batch_size = check_int(func, "batch_size", batch_size, minimum=1)
        if transform is not None and not callable(transform):
            raise TypeError(f"{func}: transform must be callable (images, indices, epoch) or None, "
                            f"got {type(transform).__name__}")
        self.transform = transform
        self.shuffle = bool(shuffle)
        self.seed = check_int(func, "seed", seed, minimum=0)
        self.drop_last = bool(drop_last)
        self.prefetch = check_int(func, "prefetch", prefetch, minimum=0)
        self.world_size = check_int(func, "world_size", world_size, minimum=1)
        self.rank = check_int(func, "rank", rank, minimum=0)
        if self.rank >= self.world_size:
            raise ValueError(f"{func}: rank must be in 0..world_size-1 = 0..{self.world_size - 1}, "
                             f"got {self.rank}")
        if self.batch_size % self.world_size:
            raise ValueError(f"{func}: batch_size ({self.batch_size}) must be divisible by "
                             f"world_size ({self.world_size}) so every rank gets an equal slice")
        n = len(dataset.labels)
        if n == 0:
            raise ValueError(f"{func}: the data set is empty")
        if self.drop_last and self.batch_size > n:
            raise ValueError(f"{func}: batch_size ({self.batch_size}) is larger than the data set "
                             f"({n} samples); with drop_last=True there would be no batch at all")
        self.epoch = 0

    def __len__(self):
        n = len(self.dataset.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch):
        """The sample order of `epoch`: (N,) int64, a permutation of 0..N-1 drawn from
        (seed, epoch) alone, or 0..N-1 when shuffle is False."""
        epoch = check_int("DataLoader.order", "epoch", epoch, minimum=0)
        n = len(self.dataset.labels)
        if not self.shuffle:
            return np.arange(n, dtype=np.int64)
        return np.random.default_rng([_SHUFFLE_STREAM, self.seed, epoch]).permutation(n)

    def batch_indices(self, order, step):
        """This rank's sample indices for global batch `step` of an epoch with order `order`.
        Returns (B,) int64 with B = batch_size / world_size (last batch: see drop_last)."""
        batch = order[step * self.batch_size:(step + 1) * self.batch_size]
        if len(batch) == self.batch_size:
            local = self.batch_size // self.world_size
            return batch[self.rank * local:(self.rank + 1) * local]
        return np.array_split(batch, self.world_size)[self.rank]

    def _make_batch(self, order, epoch, step):
        """(x, y, indices) of one step: gather, transform, labels."""
        indices = self.batch_indices(order, step)
        images = np.asarray(self.dataset.images[indices])       # reads only these rows of a memmap
        x = images if self.transform is None else self.transform(images, indices, epoch)
        return x, self.dataset.labels[indices], indices

    def epoch_batches(self, epoch, start_step=0):
        """Generate the batches of `epoch` from step `start_step` on.

        Yields: (x, y, indices): x the transform's output, e.g. (B, 3, 227, 227) float32;
            y (B,) int64 labels; indices (B,) int64 positions of the samples in the data set.
        Resuming at (epoch, start_step) yields exactly the batches start_step.. of an
        uninterrupted run.
        """
        # Arguments are checked here, when epoch_batches is called; the batches themselves come
        # from the generator _generate, which runs only as the caller iterates.
        epoch = check_int("DataLoader.epoch_batches", "epoch", epoch, minimum=0)
        start_step = check_int("DataLoader.epoch_batches", "start_step", start_step, minimum=0)
        if start_step > len(self):
            raise ValueError(f"DataLoader.epoch_batches: start_step must be in 0..{len(self)} "
                             f"(batches per epoch), got {start_step}")
        return self._generate(epoch, range(start_step, len(self)))

    def _generate(self, epoch, steps):
        """Generator behind epoch_batches: the batches `steps` of `epoch`."""
        order = self.order(epoch)
        if self.prefetch == 0:
            for step in steps:
                yield self._make_batch(order, epoch, step)
            return

        # The queue holds ("batch", b), ("error", exception) or ("done", None).
        ready = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()                     # set by the consumer when it stops early

        def put(item):
            """Queue `item`, waiting while the queue is full; False if the consumer stopped."""
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    pass
            return False

        def produce():
            try:
                for step in steps:
                    if not put(("batch", self._make_batch(order, epoch, step))):
                        return
                put(("done", None))
            except BaseException as exc:     # handed to the consumer, raised there
                put(("error", exc))

        worker = threading.Thread(target=produce, name="tinynet-data-loader", daemon=True)
        worker.start()
        try:
            while True:
                kind, payload = ready.get()
                if kind == "done":
                    return
                if kind == "error":
                    # The exception keeps its __traceback__, so the report shows the line in the
                    # transform (or data set) that failed, below this line.
                    raise payload
                yield payload
        finally:
            # Normal end, break, close() or an error: tell the thread to stop and wait for it
            # (at most until it finishes the batch it is preparing).
            stop.set()
            worker.join()

    def set_epoch(self, epoch):
        """Choose the epoch that the next `for batch in loader` iterates over (default 0)."""
        self.epoch = check_int("DataLoader.set_epoch", "epoch", epoch, minimum=0)

    def __iter__(self):
        """`for x, y, idx in loader`: the batches of epoch `self.epoch`, after which the next
        pass is the next epoch (a new order and new augmentations), as in a training loop
        that never names its epochs. set_epoch(e) chooses the epoch of the next pass."""
        epoch = self.epoch
        self.epoch += 1
        return self.epoch_batches(epoch)
