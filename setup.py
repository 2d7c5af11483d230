"""Thin shim so that `python setup.py ...` and old pip versions still work; metadata lives in pyproject.toml."""
from setuptools import setup

setup()
