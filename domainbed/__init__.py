"""DomainBed-compatible domain-generalization framework with FT-LP.

FT-LP: Fine-Tuning with Large-scale pre-trained Priors (arXiv 2406.05628).
"""

from domainbed.version import __version__

__all__ = ["__version__"]
