"""Test-only fault injection for recipe subprocesses: put this folder first on PYTHONPATH. Does nothing unless one of
its environment variables is set:

- GOFT_FAULT_KILL_WHILE_SAVING=checkpoint-4/optimizer.pt: `torch.save` into that file writes half of it, then the
  process SIGKILLs itself (a kill in the middle of writing a checkpoint);
- GOFT_FAULT_NAN_FROM_CALL=k: from this process's k-th `F.embedding` call on (one per training step in the SFT recipe
  on the tiny test model) the embeddings, hence the loss, are NaN; GOFT_FAULT_NAN_RANK=r limits it to process r;
- GOFT_FAULT_SLOW_FORWARD=seconds: every `F.embedding` call sleeps that long first (time for a test to act).
"""

import os

KILL_WHILE_SAVING = os.environ.get("GOFT_FAULT_KILL_WHILE_SAVING")
NAN_FROM_CALL = int(os.environ.get("GOFT_FAULT_NAN_FROM_CALL", "0"))
NAN_RANK = os.environ.get("GOFT_FAULT_NAN_RANK")
SLOW_FORWARD = float(os.environ.get("GOFT_FAULT_SLOW_FORWARD", "0"))


def _kill_while_saving(torch) -> None:
    """Wrap `torch.save` so that saving into KILL_WHILE_SAVING writes half the bytes and dies."""
    import io
    import signal

    original = torch.save

    def save(obj, f, *args, **kwargs):
        """`torch.save`, except for the one file to die in."""
        target = f if isinstance(f, (str, os.PathLike)) else None
        if target is None or not os.fspath(target).replace(os.sep, "/").endswith("/" + KILL_WHILE_SAVING):
            return original(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        original(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        with open(target, "wb") as handle:
            handle.write(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = save


def _faulty_embeddings(torch) -> None:
    """Wrap `F.embedding`: sleep SLOW_FORWARD seconds, and return NaN from call NAN_FROM_CALL on."""
    import time

    functional = torch.nn.functional
    original = functional.embedding
    poisoned = NAN_FROM_CALL > 0 and NAN_RANK in (None, os.environ.get("RANK", "0"))
    calls = [0]

    def embedding(*args, **kwargs):
        """`F.embedding`, slowed down and/or NaN as configured."""
        calls[0] += 1
        if SLOW_FORWARD:
            time.sleep(SLOW_FORWARD)
        out = original(*args, **kwargs)
        return out * float("nan") if poisoned and calls[0] >= NAN_FROM_CALL else out

    functional.embedding = embedding


if KILL_WHILE_SAVING or NAN_FROM_CALL or SLOW_FORWARD:
    import torch as _torch

    if KILL_WHILE_SAVING:
        _kill_while_saving(_torch)
    if NAN_FROM_CALL or SLOW_FORWARD:
        _faulty_embeddings(_torch)
