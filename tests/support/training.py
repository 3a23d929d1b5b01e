"""Training a model for a few optimizer steps, and moving adapter tensors off their identity start."""

from collections.abc import Callable, Iterable

import torch


def train_steps(
    model: torch.nn.Module,
    steps: int,
    lr: float | None = None,
    *,
    ids: torch.Tensor | None = None,
    loss: Callable[[], torch.Tensor] | None = None,
    optimizer=torch.optim.AdamW,
    parameters: Iterable[torch.nn.Parameter] | None = None,
    backward: Callable[[torch.Tensor], None] | None = None,
) -> list[float]:
    """`steps` optimizer steps on `model`; returns each step's loss.

    The loss is `loss()`, or the causal-LM loss of the token `ids` on themselves. `optimizer` is an optimizer class,
    built over `parameters` (default: the trainable ones) with `lr`, or one already built. Gradients are zeroed
    before each step and after the last; `backward` replaces `loss.backward()` (e.g. `accelerator.backward`)."""
    if (ids is None) == (loss is None):
        raise ValueError("give the token `ids` or a `loss` function, not both")
    if isinstance(optimizer, type):
        chosen = [p for p in model.parameters() if p.requires_grad] if parameters is None else list(parameters)
        optimizer = optimizer(chosen, lr=lr)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        value = model(input_ids=ids, labels=ids).loss if loss is None else loss()
        value.backward() if backward is None else backward(value)
        optimizer.step()
        losses.append(value.item())
    optimizer.zero_grad()
    return losses


@torch.no_grad()
def perturb(model_or_tensors, scale: float = 0.05, seed: int | None = 3):
    """Add `scale` × standard normal noise to every trainable tensor of a model (in `parameters()` order), or to the
    given tensors: a seeded stand-in for training. The noise comes from a generator seeded with `seed` (None: torch's
    global generator as it stands). Returns what it was given."""
    if isinstance(model_or_tensors, torch.nn.Module):
        tensors = [p for p in model_or_tensors.parameters() if p.requires_grad]
    else:
        tensors = list(model_or_tensors)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    for tensor in tensors:
        tensor.add_(scale * torch.randn(tensor.shape, generator=generator))  # float32 noise, whatever the dtype
    return model_or_tensors
