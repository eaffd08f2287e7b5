"""instructgpt_jax: InstructGPT (SFT, reward model, PPO-ptx) in JAX/Flax."""

from instructgpt_jax import xla_cpu

# Before JAX makes its CPU client: simulated devices need spare client threads (xla_cpu.py).
xla_cpu.configure()

__version__ = "0.1.0"
