"""Run by test_fsdp.py with two processes: merge a Givens adapter into a model sharded by FSDP2 (`fully_shard`).

The base weights are DTensors sharded across the ranks; merging must read each whole weight, rotate it and shard
it again. Prints the largest logit difference between the adapter and the merged model, and the weights' scale.
"""

import sys

import torch
import torch.distributed as dist
from peft import get_peft_model
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM

import goft
from goft.training.parallel.processes import leave_process_group

dist.init_process_group("gloo")
torch.manual_seed(0)
model = get_peft_model(
    AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32),
    goft.GivensConfig(init_weights=False, target_modules="all-linear"),
)
for layer in model.get_base_model().model.layers:
    fully_shard(layer)
fully_shard(model)
weight = model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
assert isinstance(weight, DTensor) and weight.to_local().shape[0] < weight.shape[0], "weights should be sharded"
ids = torch.tensor([[5, 17, 42, 99, 3, 250, 7]])
with torch.no_grad():
    adapted = model(ids).logits
    model.merge_adapter()  # merged layers skip the adapter: the base weights alone carry the rotation
    merged = model(ids).logits
    model.unmerge_adapter()
    restored = model(ids).logits
assert isinstance(weight, DTensor)  # still sharded after the merge
if dist.get_rank() == 0:
    print(
        "RESULT",
        (merged - adapted).abs().max().item(),
        (restored - adapted).abs().max().item(),
        adapted.abs().max().item(),
    )
leave_process_group()
