from setuptools import setup

setup(cffi_modules=["src/fastipc/_build.py:ffibuilder"])
