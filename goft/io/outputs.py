"""Where a run writes: never into what it reads, one run at a time, and nothing a user made lost.

- `check_output_location`: before anything is loaded, `output_dir` must not be a file, must be writable, and must
  neither equal nor overlap (contain or lie inside) any location the run reads: the model, the adapter it continues,
  the data, the recipe file, a chat template, the evaluation sets.
- `refuse_finished_output`: a finished run, report or merged model in `output_dir` is never replaced unless
  `overwrite_output_dir` says so.
- `hold_output_lock`: one run at a time per `output_dir`, by an advisory lock on a file in it. The operating system
  releases the lock when the process ends, however it ends, so a killed run never leaves it stuck.
- `set_aside_previous_run`: `overwrite_output_dir` moves the previous run into `overwritten-<time>/` inside
  `output_dir` instead of deleting it; `drop_set_aside_runs` deletes those folders once a new run has finished there.
- `mark_finished` / `read_run_record`: the record (`goft_run.json`) a finished run leaves, which training, evaluation
  and the comparison read alike.
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import shutil
from pathlib import Path

from goft.errors import RecipeError

logger = logging.getLogger(__name__)

LOCK_FILE = ".goft_run.lock"
SET_ASIDE_PREFIX = "overwritten-"
KEPT_ON_OVERWRITE = (LOCK_FILE, "replay.json")  # the lock, and the base's answers (a keyed cache, not a result)

_held_locks: dict[str, object] = {}  # open lock files, kept for the life of the process


def _resolved(path) -> Path:
    return Path(os.path.expanduser(str(path))).resolve()


def _overlap(output: Path, other: Path) -> str | None:
    """How `output` overlaps `other` ("is", "lies inside", "contains"), or None."""
    if output == other:
        return "is"
    if output.is_relative_to(other):
        return "lies inside"
    if other.is_relative_to(output):
        return "contains"
    return None


def check_output_location(output_dir, inputs: dict[str, object], key: str = "output_dir") -> None:
    """Refuse an `output_dir` that is a file, cannot be written, or overlaps one of `inputs` ({what: path}; None and
    non-local names such as Hub ids are skipped). Nothing is created."""
    if not output_dir:
        raise RecipeError(f"`{key}` is required: the folder the run writes to.")
    output = _resolved(output_dir)
    if output.exists() and not output.is_dir():
        raise RecipeError(
            f"`{key}` {str(output_dir)!r} is a file, not a folder. Give a folder (new or holding "
            "this run's earlier output)."
        )
    for what, path in inputs.items():
        if not path or not os.path.exists(os.path.expanduser(str(path))):
            continue
        relation = _overlap(output, _resolved(path))
        if relation:
            raise RecipeError(
                f"`{key}` {str(output_dir)!r} {relation} the {what} {str(path)!r}: the run would write "
                f"into what it reads (and `overwrite_output_dir` would move it away). Choose a "
                f"separate `{key}`, e.g. runs/<name>."
            )
    _check_writable(output, output_dir, key)


def refuse_finished_output(
    output_dir, finished_by: str | None, what: str, overwrite: bool, overwrite_does: str = "replace it"
) -> None:
    """The guard that keeps finished work: an `output_dir` holding `what` (the file `finished_by` that the finished
    work writes; None: any visible file) is refused unless `overwrite`. It reads only; `overwrite_does` says what the
    flag would do."""
    folder = _resolved(output_dir)
    if folder.exists() and not folder.is_dir():
        raise RecipeError(f"`output_dir` {str(output_dir)!r} is a file, not a folder.")
    if overwrite or not folder.is_dir():
        return
    if finished_by is None:
        found = any(not path.name.startswith(".") for path in folder.iterdir())
    else:
        found = (folder / finished_by).is_file()
    if found:
        evidence = f" ({finished_by} is there)" if finished_by else ""
        raise RecipeError(
            f"{str(output_dir)!r} already holds {what}{evidence}. Choose another `output_dir`, or pass "
            f"`--overwrite_output_dir true` to {overwrite_does}."
        )


def _check_writable(output: Path, given, key: str) -> None:
    """The folder, or the nearest existing folder above it, accepts new files."""
    existing = output
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise RecipeError(f"`{key}` {str(given)!r} cannot be created: {str(existing)!r} is a file.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RecipeError(
            f"`{key}` {str(given)!r} cannot be written: no write permission on {str(existing)!r}. "
            "Choose a folder you can write to."
        )


def hold_output_lock(output_dir, what: str = "run") -> None:
    """Create `output_dir` and lock it for this process's lifetime; another live process holding the lock is an
    error naming it. Where advisory locks are not available, a warning, and no lock."""
    folder = _resolved(output_dir)
    if str(folder) in _held_locks:
        return
    try:
        import fcntl
    except ImportError:  # not a POSIX system
        logger.warning("Cannot lock %s on this platform: do not start two runs into it at once.", folder)
        return
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK_FILE, "a+")  # noqa: SIM115  (held open, and so locked, for the process's life)
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RecipeError(
            f"Another {what} is writing into {str(output_dir)!r} ({holder}). Wait for it to end, or "
            "choose another `output_dir`; two runs in one folder would delete each other's "
            "checkpoints."
        ) from None
    handle.seek(0)
    handle.truncate()
    started = datetime.datetime.now().isoformat(timespec="seconds")
    handle.write(
        f"process {os.getpid()} on {os.uname().nodename if hasattr(os, 'uname') else 'this machine'}, "
        f"started {started}\n"
    )
    handle.flush()
    _held_locks[str(folder)] = handle


def set_aside_previous_run(output_dir) -> Path | None:
    """Move everything in `output_dir` but the lock, the kept caches and earlier set-aside runs into a new
    `overwritten-<time>` folder there, and say where; None when there was nothing to move."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    moved = [p for p in folder.iterdir() if p.name not in KEPT_ON_OVERWRITE and not p.name.startswith(SET_ASIDE_PREFIX)]
    if not moved:
        return None
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    target = folder / f"{SET_ASIDE_PREFIX}{stamp}"
    copy = 1
    while target.exists():
        copy += 1
        target = folder / f"{SET_ASIDE_PREFIX}{stamp}.{copy}"
    target.mkdir()
    for path in moved:
        path.rename(target / path.name)
    logger.warning(
        "overwrite_output_dir: the previous run in %s was moved to %s. It is deleted when the new run "
        "finishes; until then (a crash, an interrupt) it stays there. Copy it elsewhere to keep it.",
        folder,
        target,
    )
    return target


def set_aside_runs(output_dir) -> list[Path]:
    """The `overwritten-*` folders in `output_dir`, oldest first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith(SET_ASIDE_PREFIX))


def drop_set_aside_runs(output_dir) -> None:
    """Delete the runs `overwrite_output_dir` set aside in `output_dir`, once a new run has finished there."""
    for path in set_aside_runs(output_dir):
        shutil.rmtree(path)
        logger.info("Deleted %s: the run that replaced it has finished.", path)


FINISHED_MARKER = "goft_run.json"


def read_run_record(folder) -> dict | None:
    """The summary (`goft_run.json`) a finished run wrote in `folder`, or None when there is none; a marker that is
    not a JSON object is an error naming the file."""
    marker = Path(folder).expanduser() / FINISHED_MARKER
    if not marker.is_file():
        return None
    try:
        record = json.loads(marker.read_text())
    except json.JSONDecodeError:
        record = None
    if not isinstance(record, dict):
        raise RecipeError(f"{marker} is not a valid run record (a JSON object).")
    return record


def mark_finished(output_dir: str, summary: dict) -> None:
    """Write the finished-run marker (`goft_run.json`) with the run's summary."""
    Path(output_dir, FINISHED_MARKER).write_text(json.dumps(summary, indent=2, default=str) + "\n")
