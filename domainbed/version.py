"""The package version, in one place: ``domainbed.__version__`` and setup.py read it from here.

Bump it with a release and move CHANGELOG.md's "Unreleased" entries under the new number.
"""

__version__ = "0.1.0"
