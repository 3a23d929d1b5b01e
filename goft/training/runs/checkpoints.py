"""Auto-resume: rerunning a command continues from its last complete checkpoint; a finished run is never overwritten.

A checkpoint is complete once its marker file (`COMPLETE_MARKER`, written last, see `mark_complete`) is there; a
`checkpoint-N` folder without it was being written when the run died. Those newer than the last complete checkpoint
are moved aside (renamed `incomplete-checkpoint-N`, never deleted) so that neither goft nor transformers resumes from
them or counts them among the checkpoints it keeps.
"""

import json
import logging
import os
import re
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from goft.errors import RecipeError
from goft.io.outputs import FINISHED_MARKER, refuse_finished_output
from goft.training.parallel.processes import is_main_process

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "goft_checkpoint_complete.json"
INCOMPLETE_PREFIX = "incomplete-"
TRAINER_STATE_FILE = "trainer_state.json"
_CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def resume_checkpoint(output_dir: str, resume_from_checkpoint, overwrite: bool) -> str | None:
    """The checkpoint to resume from, None to start fresh; refuses an `output_dir` holding a finished run. Reads
    only: the incomplete checkpoints newer than the answer are moved aside later (`set_aside_incomplete`), once
    every check has passed.

    An explicit `resume_from_checkpoint` folder is used as given; otherwise the newest complete checkpoint in
    `output_dir`."""
    explicit = isinstance(resume_from_checkpoint, str) and resume_from_checkpoint not in ("", "True", "true")
    if overwrite and explicit:
        raise RecipeError(
            f"`overwrite_output_dir: true` starts afresh, and `resume_from_checkpoint` "
            f"{resume_from_checkpoint!r} asks to continue: give one of them."
        )
    if overwrite:
        return None
    refuse_finished_output(
        output_dir,
        FINISHED_MARKER,
        "a finished run",
        overwrite=False,
        overwrite_does="train afresh in it (the finished run is moved aside until the new one has finished)",
    )
    if explicit:
        return _explicit_checkpoint(resume_from_checkpoint)
    return last_complete_checkpoint(output_dir)


def set_aside_incomplete(output_dir: str, resume_from: str | None) -> None:
    """Move aside the incomplete `checkpoint-N` folders of `output_dir` newer than `resume_from` (all of them when
    starting fresh), on the main process only: every process resumes from the same checkpoint, since only folders
    without the marker are renamed."""
    folder = Path(output_dir)
    if not folder.is_dir() or not is_main_process():
        return
    last_step = step_of(resume_from) if resume_from and Path(resume_from).parent == folder else -1
    for step, path in _checkpoints(folder):
        if step > last_step and not is_complete(path):
            set_aside(path)


def recorded_summary(checkpoint: str) -> dict:
    """What the checkpoint's completion marker records ({} when it has none or it cannot be read)."""
    try:
        record = json.loads((Path(checkpoint) / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def step_of(checkpoint: str) -> int:
    """The optimizer step a checkpoint was saved at: its marker's, else its folder name's, else 0."""
    recorded = recorded_summary(checkpoint).get("global_step")
    if isinstance(recorded, int):
        return recorded
    match = _CHECKPOINT_NAME.match(Path(checkpoint).name)
    return int(match.group(1)) if match else 0


def _explicit_checkpoint(path: str) -> str:
    """An explicit `resume_from_checkpoint` folder, as given (a warning when it has no completion marker)."""
    if not os.path.isdir(path):
        raise RecipeError(f"`resume_from_checkpoint` {path!r} is not a folder.")
    if not os.path.isfile(os.path.join(path, TRAINER_STATE_FILE)):
        raise RecipeError(
            f"`resume_from_checkpoint` {path!r} is not a training checkpoint: it has no "
            f"{TRAINER_STATE_FILE}. Give a `checkpoint-N` folder a run saved, or leave the key out to "
            "resume automatically from `output_dir`."
        )
    if not is_complete(Path(path)):
        logger.warning(
            "`resume_from_checkpoint` %s has no %s: it may have been written by another tool or left "
            "half-written by a killed run. Resuming from it as asked.",
            path,
            COMPLETE_MARKER,
        )
    return path


def _checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of the `checkpoint-N` folders in `folder`, oldest step first."""
    found = []
    for path in folder.iterdir():
        match = _CHECKPOINT_NAME.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def is_complete(checkpoint: Path) -> bool:
    """Whether the checkpoint folder was written to the end (its completion marker is there)."""
    return (checkpoint / COMPLETE_MARKER).is_file()


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The path of the highest-numbered complete `checkpoint-N` in `output_dir`, None when there is none."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    complete = [path for _, path in _checkpoints(folder) if is_complete(path)]
    return os.path.join(output_dir, complete[-1].name) if complete else None


def set_aside(checkpoint: Path) -> Path | None:
    """Rename an incomplete checkpoint to `incomplete-checkpoint-N` (a free name), which no resume or rotation
    matches; its files stay for whoever wants to inspect them. None when another process moved it first (a launcher
    that sets no RANK)."""
    target = checkpoint.with_name(INCOMPLETE_PREFIX + checkpoint.name)
    copy = 1
    while target.exists():
        copy += 1
        target = checkpoint.with_name(f"{INCOMPLETE_PREFIX}{checkpoint.name}.{copy}")
    try:
        checkpoint.rename(target)
    except FileNotFoundError:
        return None
    logger.warning(
        "%s has no %s: the run was stopped while writing it. Moved it aside to %s (not deleted); if it "
        "is a complete checkpoint from another tool, pass it as `resume_from_checkpoint`.",
        checkpoint,
        COMPLETE_MARKER,
        target.name,
    )
    return target


def mark_complete(checkpoint: str, summary: dict) -> None:
    """Flush the checkpoint's files to disk, then write its completion marker atomically (temp file, fsync,
    `os.replace`, fsync of the folder): a checkpoint with the marker is whole even after a crash or power loss."""
    folder = Path(checkpoint)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            _fsync(path)
    temporary = folder / f".{COMPLETE_MARKER}.tmp"
    with open(temporary, "w") as handle:
        handle.write(json.dumps(summary, indent=2, default=str) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, folder / COMPLETE_MARKER)
    _fsync(folder)


def _fsync(path: Path) -> None:
    """fsync a file or (where the platform allows opening one) a folder."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        if path.is_dir():  # folders cannot be opened on Windows; their entries are durable there anyway
            return
        raise
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
