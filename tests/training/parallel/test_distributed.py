"""Givens adapters under DDP: two CPU processes through `accelerate launch` (gloo)."""

import os

import pytest
import torch

from tests.support.recipes import SCRIPTS, launch


@pytest.mark.slow
def test_two_process_ddp_training_keeps_ranks_in_sync(tmp_path):
    result = launch(
        SCRIPTS / "ddp_train_givens.py", [str(tmp_path)], processes=2, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert all(r["world_size"] == 2 for r in ranks)  # really two processes
    assert ranks[0]["losses"] != ranks[1]["losses"]  # ... on different data
    for name, value in ranks[0]["angles"].items():
        assert value.abs().max() > 0, name  # trained
        assert torch.equal(value, ranks[1]["angles"][name]), name  # and identical on both ranks
    assert all(r["orthogonality_error"] <= 1e-5 for r in ranks)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
