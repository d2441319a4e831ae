"""Training: one loop for LoRA and full fine-tuning, checkpoints that survive a kill, exact resume."""
