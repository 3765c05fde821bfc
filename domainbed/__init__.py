"""DomainBed-compatible domain-generalization framework with FT-LP.

FT-LP: Fine-Tuning with Large-scale pre-trained Priors (arXiv 2406.05628).
"""

from typing import TYPE_CHECKING, Any

from domainbed.version import __version__

if TYPE_CHECKING:
    from domainbed.inference.model_file import ExportedModel

__all__ = ["__version__", "load_model"]


def load_model(path: Any, device: Any = None) -> "ExportedModel":
    """The model in a file written by ``python -m domainbed.scripts.export_model``: a module
    mapping normalised images ``(N, C, H, W)`` to logits, in eval mode, with ``class_names``.
    Needs only the file (:func:`domainbed.inference.model_file.load_model`)."""
    from domainbed.inference.model_file import load_model as _load  # torch only when asked

    return _load(path, device)
