"""rhm_jax: diffusion models on the Random Hierarchy Model, many models per compiled program."""

__version__ = "0.1.0"
