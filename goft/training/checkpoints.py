"""Auto-resume: rerunning a command continues from its last checkpoint; a finished run is never overwritten."""

import json
import os
import shutil
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from .errors import RecipeError

FINISHED_MARKER = "goft_run.json"


def resume_checkpoint(output_dir: str, resume_from_checkpoint, overwrite: bool) -> str | None:
    """The checkpoint to resume from, None to start fresh; refuses an `output_dir` holding a finished run."""
    folder = Path(output_dir)
    if overwrite:
        return None
    if (folder / FINISHED_MARKER).is_file():
        raise RecipeError(f"{output_dir!r} holds a finished run ({FINISHED_MARKER} is there). Choose another "
                          "`output_dir`, or pass `--overwrite_output_dir true` to train afresh in it.")
    if isinstance(resume_from_checkpoint, str) and resume_from_checkpoint not in ("", "True", "true"):
        if not os.path.isdir(resume_from_checkpoint):
            raise RecipeError(f"`resume_from_checkpoint` {resume_from_checkpoint!r} is not a folder.")
        return resume_from_checkpoint
    if folder.is_dir():
        return get_last_checkpoint(str(folder))
    return None


def clear_previous_run(output_dir: str) -> None:
    """With `overwrite_output_dir`, drop the old checkpoints and marker so a later resume cannot pick them up."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return
    for checkpoint in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        if checkpoint.is_dir():
            shutil.rmtree(checkpoint)
    (folder / FINISHED_MARKER).unlink(missing_ok=True)


def mark_finished(output_dir: str, summary: dict) -> None:
    Path(output_dir, FINISHED_MARKER).write_text(json.dumps(summary, indent=2, default=str) + "\n")
