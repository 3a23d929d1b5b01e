"""Side-by-side benchmarks of goft against LoRA and peft's orthogonal methods (run from the repository root)."""
