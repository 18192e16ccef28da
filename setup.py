"""Build script. The package is pure Python for now; the compiled extension (csrc/) joins here."""

from setuptools import setup

setup()
