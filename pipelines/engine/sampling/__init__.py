"""A1111-exact sampling: noise sources (rng.py, philox.py), sigma schedules, k-diffusion samplers in generator form and
A1111's DDIM / PLMS loops, driven through a diffusers-protocol scheduler (scheduler.py)."""
