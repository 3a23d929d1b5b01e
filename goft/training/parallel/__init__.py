"""How a run is spread: the process and its device (`processes`), FSDP with adapters (`fsdp`) and FSDP on machines
without an accelerator (`cpu_fsdp`). DeepSpeed needs no code of goft's: its configs are accelerate's.

May import: `goft.errors`, accelerate, torch. Nothing else of goft.
"""
