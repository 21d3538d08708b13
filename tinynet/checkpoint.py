"""Checkpoints: one .npz file, written atomically, loaded without pickle.

Layout of the archive (every entry a plain array):
    model/<name>           the model's state_dict, e.g. model/conv1.weight
    optim/velocity/<i>     the optimiser's momentum buffers, in parameter order
    meta                   UTF-8 JSON (as uint8): format version, epoch, step,
                           optimiser hyper-parameters, scheduler and RNG states,
                           the run's configuration

Loading uses ``np.load(allow_pickle=False)``, so a checkpoint can never run
code.  Writing goes through ``tinynet.files.replace_atomically``: a temporary
file in the same folder, fsynced, then renamed over the target, and the folder
fsynced, so a crash leaves either the old or the new checkpoint, never half of
one.  The file gets the permissions of any new file (0666 less the umask), and
a temporary file left by a killed writer is removed by the next save in that
folder (tinynet/files.py says when).
"""

import json
import os
import zipfile

import numpy as np

from . import files

FORMAT_VERSION = 1


def save_checkpoint(path, model, optimizer=None, meta=None):
    """Write model (and optimiser) state plus a JSON-able ``meta`` dict."""
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    meta = dict(meta or {})
    meta["format_version"] = FORMAT_VERSION
    if optimizer is not None:
        state = optimizer.state_dict()
        for i, v in enumerate(state.pop("velocity")):
            arrays[f"optim/velocity/{i}"] = v
        meta["optimizer"] = state
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    return files.write_atomically(path, lambda f: np.savez(f, **arrays))


def link_checkpoint(source, path):
    """Make ``path`` the same checkpoint as ``source``, atomically, without writing it again:
    a hard link where the file system has them, else a copy.  (The training program's
    best.npz, when the latest weights are the best: a later save of ``source`` replaces its
    name with a new file, and ``path`` keeps these bytes.)"""
    import shutil

    def write(tmp):
        try:
            os.link(source, tmp)
        except OSError:  # no hard links here (some network and FAT file systems)
            shutil.copyfile(source, tmp)

    return files.replace_atomically(path, write)


def load_checkpoint(path):
    """Read a checkpoint: returns dict(model=state_dict, velocity=[...], meta=dict)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_checkpoint: no checkpoint file at {path}")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":  # every .npz is a zip archive, and every zip starts so
        kind = "an empty file" if not head else f"a file that starts with {head!r}"
        raise ValueError(f"load_checkpoint: {path} is not a tinynet checkpoint: it is {kind}, "
                         "not the .npz archive that training writes (latest.npz or best.npz)")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):  # a lone .npy array, not an archive
            raise ValueError("a single array, not an .npz archive")
        with z:
            meta = json.loads(bytes(z["meta"]).decode("utf-8"))
            if not isinstance(meta, dict):
                raise ValueError("its meta entry is not a JSON object")
            model = {k[len("model/"):]: z[k] for k in z.files if k.startswith("model/")}
            vel_keys = sorted((k for k in z.files if k.startswith("optim/velocity/")),
                              key=lambda k: int(k.rsplit("/", 1)[1]))
            velocity = [z[k] for k in vel_keys]
    # EOFError: empty file; BadZipFile: truncated or damaged archive
    except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"load_checkpoint: {path} is not a tinynet checkpoint ({e})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"load_checkpoint: {path} has format version {meta.get('format_version')}, "
            f"this tinynet reads version {FORMAT_VERSION}"
        )
    return {"model": model, "velocity": velocity, "meta": meta}


def restore(checkpoint, model, optimizer=None):
    """Load a checkpoint dict (from load_checkpoint) into model and optimiser."""
    model.load_state_dict(checkpoint["model"])
    if optimizer is not None and "optimizer" in checkpoint["meta"]:
        state = dict(checkpoint["meta"]["optimizer"], velocity=checkpoint["velocity"])
        optimizer.load_state_dict(state)
    return checkpoint["meta"]
