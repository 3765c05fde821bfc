"""DomainBed-compatible domain-generalization framework with FT-LP.

FT-LP: Fine-Tuning with Large-scale pre-trained Priors (arXiv 2406.05628).
"""

__version__ = "0.1.0"
