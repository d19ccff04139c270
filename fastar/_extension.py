"""Loads the compiled extension fastar._C, which registers the torch.ops.fastar kernels."""

import json
import os

_BUILD_INFO_PATH = os.path.join(os.path.dirname(__file__), "_build_info.json")


def load():
    """Imports fastar._C (the C++ op registrations); raises a helpful ImportError."""
    try:
        from fastar import _C  # noqa: F401  (import runs the C++ op registrations)
    except ImportError as e:
        raise ImportError(
            "fastar's compiled extension fastar._C could not be loaded (%s). Build it from the "
            "repository root with `pip install --no-build-isolation -e .` after installing "
            "torch; see README.md." % e
        ) from e


def build_info():
    """What setup.py compiled: backends, CUDA archs, versions (None if never built)."""
    try:
        with open(_BUILD_INFO_PATH) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
