"""Run by test_deepspeed.py with two processes: merge a Givens adapter into a ZeRO-3-partitioned model.

The base weights are partitioned across the ranks (zero.Init); merging must gather each weight, rotate it on
rank 0 and partition it again. Prints the largest logit difference between the adapter and the merged model.
"""

import sys

import deepspeed
import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM
from transformers.integrations import HfDeepSpeedConfig

import goft
from goft.training.parallel.processes import leave_process_group
from goft.tuners.givens.layer import GivensLayer

model_dir = sys.argv[1]
deepspeed.init_distributed(dist_backend="gloo")
ds_config = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1, "train_batch_size": 2}
keep_alive = HfDeepSpeedConfig(ds_config)  # makes transformers and peft see ZeRO-3 (zero.Init on load)

torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
weight = model.model.layers[0].self_attn.q_proj.weight
assert weight.numel() == 0 and tuple(weight.ds_shape) == (48, 48), "the base weights should be partitioned"
model = get_peft_model(model, goft.GivensConfig(init_weights=False))
ids = torch.tensor([[5, 17, 42, 99, 3, 250, 7]])


def logits(m):
    with deepspeed.zero.GatheredParameters(list(m.parameters())), torch.no_grad():
        return m(ids).logits.clone()


adapted = logits(model)
error = goft.orthogonality_error(model)
merged_model = model.merge_and_unload()
assert not any(isinstance(m, GivensLayer) for m in merged_model.modules())
assert merged_model.model.layers[0].self_attn.q_proj.weight.numel() == 0, "merged weights are partitioned again"
merged = logits(merged_model)
if torch.distributed.get_rank() == 0:
    print(f"RESULT {(merged - adapted).abs().max().item():.3g} {(adapted).abs().max().item():.3g} {error:.3g}")
leave_process_group()  # before interpreter shutdown, as the recipes do
