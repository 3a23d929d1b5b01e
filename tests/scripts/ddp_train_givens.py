"""Train a tiny Llama with a strict Givens adapter under `accelerate launch` (DDP) and save what each rank holds.

Usage: accelerate launch --config_file accelerate_configs/cpu_2proc.yaml tests/scripts/ddp_train_givens.py OUT_DIR
"""

import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from peft import get_peft_model

import goft

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for the tests' support package
from tests.support.models import tiny_model  # noqa: E402
from tests.support.training import train_steps  # noqa: E402


def main(out_dir: Path) -> None:
    accelerator = Accelerator(cpu=not torch.cuda.is_available())  # on CPU: gloo across the launched processes
    model = get_peft_model(tiny_model("llama", seed=0).train(), goft.GivensConfig())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    model, optimizer = accelerator.prepare(model, optimizer)
    # each rank trains on its own shard of the data: DDP must average the angle gradients
    ids = torch.randint(0, 97, (8, 16), generator=torch.Generator().manual_seed(7))
    shard = ids[accelerator.process_index :: accelerator.num_processes]
    losses = train_steps(model, 5, ids=shard, optimizer=optimizer, backward=accelerator.backward)
    unwrapped = accelerator.unwrap_model(model)
    angles = {n: p.detach().clone() for n, p in unwrapped.named_parameters() if p.requires_grad}
    torch.save(
        {
            "world_size": accelerator.num_processes,
            "angles": angles,
            "losses": losses,
            "orthogonality_error": goft.orthogonality_error(unwrapped),
        },
        out_dir / f"rank{accelerator.process_index}.pt",
    )
    if accelerator.is_main_process:
        unwrapped.save_pretrained(out_dir / "adapter")
    accelerator.end_training()  # tear the process group down before interpreter shutdown


if __name__ == "__main__":
    main(Path(sys.argv[1]))
