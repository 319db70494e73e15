"""Hydra's SLURM launcher (submitit) with a wait that needs no accounting; see ``launcher.py``."""
