"""A lightweight, self-hosted Stable Diffusion web UI."""
__version__ = "0.2.0"
