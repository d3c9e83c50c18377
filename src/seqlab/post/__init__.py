"""Post-training: SFT, rejection sampling, reward models, PPO, GRPO, DPO, distillation (one file each)."""

from importlib import import_module

# algorithm name (the CLI's) -> "module:function" running it from a PostConfig
RUNNERS = {"sft": "sft:run_sft", "rejection": "rejection:run_rejection", "rm": "reward_model:run_reward_model",
           "ppo": "ppo:run_ppo", "grpo": "grpo:run_grpo", "dpo": "dpo:run_dpo", "distill": "distill:run_distill"}


def get_runner(algorithm: str):
    module, function = RUNNERS[algorithm].split(":")
    return getattr(import_module(f"{__name__}.{module}"), function)
