"""dlab: a diffusion lab for your own workstation."""

__version__ = "0.1.0"
