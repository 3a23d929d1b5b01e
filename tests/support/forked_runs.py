"""Entry points run as real processes, forked from one worker process that imported torch, transformers, TRL, peft,
datasets and goft once: each run still has its own process, exit status, stdout and stderr, but starts in well
under a second instead of the several seconds those imports take.

The worker never runs a tensor operation itself, so no thread pool exists when it forks. Environment variables
are set per run, but those the libraries read at import time (HF_HOME, HF_HUB_OFFLINE, PYTHONPATH, HF_ENDPOINT) are
the worker's: a run that needs other ones there must start a fresh process instead.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

WORKER = r"""
import json, os, runpy, sys, traceback

import datasets, peft, torch, transformers, trl  # noqa: F401  (imported once; every forked run inherits them)
import goft.comparison.runner, goft.training.prepare, goft.training.publish.merging  # noqa: F401

def run(request):
    code = 1
    try:
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        sys.argv = [request["script"], *request["args"]]
        sys.path[0] = os.path.dirname(request["script"])
        try:
            runpy.run_path(request["script"], run_name="__main__")
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except BaseException:
            traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        run(request)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)
"""


@dataclass
class Finished:
    """What a forked run left: like `subprocess.CompletedProcess`."""

    returncode: int
    stdout: str
    stderr: str


class ForkedRuns:
    """A worker process that forks one real process per `run`; use as a context manager."""

    def __init__(self, env: dict, cwd: Path, scratch: Path):
        self.env, self.cwd, self.scratch = env, cwd, scratch
        self.count = 0
        self.worker = None

    def __enter__(self) -> ForkedRuns:
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.worker = subprocess.Popen(
            [sys.executable, "-c", WORKER],
            cwd=self.cwd,
            env=self.env,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        return self

    def __exit__(self, *exc) -> None:
        self.worker.stdin.close()
        self.worker.wait(timeout=60)

    def run(self, script: Path, args: list[str], env: dict | None = None) -> Finished:
        """Run `script` with `args` (as `python script args...`) in a forked process; `env`: its environment."""
        self.count += 1
        out, err = self.scratch / f"{self.count}.out", self.scratch / f"{self.count}.err"
        request = {
            "script": str(script),
            "args": [str(a) for a in args],
            "env": env or self.env,
            "cwd": str(self.cwd),
            "stdout": str(out),
            "stderr": str(err),
        }
        self.worker.stdin.write(json.dumps(request) + "\n")
        self.worker.stdin.flush()
        reply = self.worker.stdout.readline()
        if not reply:
            raise RuntimeError(f"the fork worker died (exit status {self.worker.poll()})")
        return Finished(json.loads(reply)["returncode"], out.read_text(), err.read_text())
