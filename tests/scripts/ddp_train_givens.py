"""Train a tiny Llama with a strict Givens adapter under `accelerate launch` (DDP) and save what each rank holds.

Usage: accelerate launch --config_file accelerate_configs/cpu_2proc.yaml tests/scripts/ddp_train_givens.py OUT_DIR
"""

import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from peft import get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

import goft


def main(out_dir: Path) -> None:
    accelerator = Accelerator(cpu=not torch.cuda.is_available())  # on CPU: gloo across the launched processes
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97, hidden_size=72, intermediate_size=100, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )
    model = get_peft_model(LlamaForCausalLM(config), goft.GivensConfig())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    model, optimizer = accelerator.prepare(model, optimizer)
    # each rank trains on its own shard of the data: DDP must average the angle gradients
    ids = torch.randint(0, 97, (8, 16), generator=torch.Generator().manual_seed(7))
    shard = ids[accelerator.process_index :: accelerator.num_processes]
    losses = []
    for _ in range(5):
        loss = model(input_ids=shard, labels=shard).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
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
