"""Measurement scripts (``python -m benchmarks.<name>``); docs/benchmarks.md holds their results.

Importing hf_fedzo here, before any benchmark imports torch or transformers, gives every benchmark process the
library's process setup: the known harmless warnings filtered and OpenMP's passive waits (hf_fedzo/__init__.py).
"""

import hf_fedzo  # noqa: F401
