"""goft's peft methods, one folder each (shaped like peft's own `tuners/<method>/`: config, layer, model), and what
they share: the tuner base (`base`), bitsandbytes weights (`quantized`), FSDP2-sharded tensors (`sharded`) and the
orthogonality measures (`orthogonality`).

May import: `goft.rotation`, `goft.registration`, peft, transformers, torch. Nothing above (data, io, training,
evaluation).
"""
