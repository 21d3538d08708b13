"""Run folders: every training run writes into a folder of its own, and no run writes into
another's.

A run folder holds what one run wrote: config.json (what ran), metrics.jsonl (one JSON object
per line), curves.png, conv1_filters.png, latest.npz and best.npz. The rules (as in Lightning's version_N folders):

    a new run          gets a fresh folder: base/version_0, version_1, ... (next_version_dir),
                       or the folder named by the user, which must be empty or new
                       (claim_new_run_dir refuses one that holds a run, and says the way out);
    a resumed run      continues in the folder of its checkpoint (resume_target), whose metrics
                       are cut back to the checkpoint's step (keep_metrics_upto), so an
                       interrupted run's curves are those of an uninterrupted one; resumed into
                       another folder, it starts a new run there that begins with the copied
                       history.

Refusals raise RunFolderError (a ValueError) with a one-line message.
"""

import json
import os
import warnings

from . import files

# The files a training run writes; a folder holding any of them belongs to a run.
RUN_FILES = ("config.json", "metrics.jsonl", "latest.npz", "best.npz", "curves.png", "conv1_filters.png")


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked (the message says why and what to do)."""


def run_files(folder):
    """The names in RUN_FILES present in `folder` (empty if it does not exist)."""
    return [name for name in RUN_FILES if os.path.exists(os.path.join(folder, name))]


def next_version_dir(base):
    """Create and return base/version_N, N one more than the largest there (0 in a new base).

    The folder is made with os.mkdir, which fails if it exists, so two runs started at the same
    moment still get different folders.
    """
    os.makedirs(base, exist_ok=True)
    taken = [int(name[len("version_"):]) for name in os.listdir(base)
             if name.startswith("version_") and name[len("version_"):].isdigit()]
    n = max(taken, default=-1) + 1
    while True:
        path = os.path.join(base, f"version_{n}")
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            n += 1


def claim_new_run_dir(folder, option="--out", create=True):
    """Make `folder` the folder of a new run: created if missing, accepted if empty of run files.
    create=False only checks.

    Raises RunFolderError if `folder` is a file, or already holds a run (naming its files and the
    ways out: another folder, or resuming that run).
    """
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise RunFolderError(f"{option} {folder} is a file, not a folder; give a folder for the run")
    present = run_files(folder)
    if present:
        resume = os.path.join(folder, "latest.npz")
        way = (f"continue it with --resume {resume}" if "latest.npz" in present
               else "delete it yourself if it is not needed")
        raise RunFolderError(f"{option} {folder} already holds a run ({', '.join(present)}); "
                             f"a run never overwrites another: choose another {option}, or {way}")
    if create:
        os.makedirs(folder, exist_ok=True)
    return folder


def _same_folder(a, b):
    return os.path.realpath(a) == os.path.realpath(b)


def resume_target(checkpoint, global_step, latest_step, out=None, option="--out", create=True):
    """Where a run resumed from `checkpoint` writes, and whether it starts a new folder.

    Args:
        checkpoint: path of the checkpoint to resume from.
        global_step: the checkpoint's step.
        latest_step: the step of latest.npz in the checkpoint's folder (None if there is none).
        out: the folder asked for, or None (the checkpoint's own).
        create: False only checks (a new folder is not made yet).

    Returns: (folder, branched): the checkpoint's own folder and False when the run continues
        there; `out` (claimed with claim_new_run_dir) and True when it starts a new run there.
    Raises RunFolderError if continuing in the checkpoint's folder would rewrite a later part of
    that run (the checkpoint is older than the folder's latest.npz), saying to give --out.
    """
    home = os.path.dirname(os.path.abspath(checkpoint))
    if out is not None and not _same_folder(out, home):
        return claim_new_run_dir(out, option, create), True
    if latest_step is not None and latest_step > global_step:
        raise RunFolderError(
            f"--resume {checkpoint} is at step {global_step}, but its run went on to step "
            f"{latest_step} ({os.path.join(home, 'latest.npz')}); continuing in {home} would "
            f"overwrite that: give {option} NEW_FOLDER to train on from it in a new run folder")
    return home, False


def read_metrics(path):
    """The entries of a metrics.jsonl file (a list of dicts); [] if there is none.

    The file is appended to line by line, so a crash can leave its last line half written
    (no newline at its end): that line is dropped, with a warning (the checkpoint being resumed
    is older than it anyway). Any other line that is not JSON is an error naming the line."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = f.readlines()
    entries = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError as e:
            if number == len(lines) and not line.endswith("\n"):
                warnings.warn(f"{path}: its last line is cut short (a crash while it was written), "
                              f"dropped: {line[:60]!r}", RuntimeWarning, stacklevel=2)
                break
            raise ValueError(f"{path}, line {number}: not a JSON entry ({e}); the file was "
                             f"changed by hand or damaged") from None
    return entries


def write_metrics(path, entries):
    """Replace the metrics file `path` by `entries`, atomically (tinynet.files)."""
    files.write_atomically(path, lambda f: f.writelines(json.dumps(e) + "\n" for e in entries),
                           binary=False)


def keep_metrics_upto(entries, global_step):
    """The entries logged up to and including `global_step`: what a run resumed from a checkpoint
    of that step had already logged (later entries came from steps it will redo)."""
    return [e for e in entries if e.get("step", 0) <= global_step]
