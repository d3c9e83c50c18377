"""Post-training: SFT, rejection sampling, reward models, PPO, GRPO, DPO."""
