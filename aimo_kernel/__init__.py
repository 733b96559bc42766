"""aimo_kernel: SC-TIR for the AI Mathematical Olympiad Kaggle prizes.

Importing the package is light: vLLM and torch are imported only by the vLLM engine backend, when
an engine is created (:func:`aimo_kernel.engine.get_engine`).
"""

from aimo_kernel.config import Config, ConfigError, load_config

__version__ = "0.1.0"

__all__ = ["Config", "ConfigError", "__version__", "load_config"]
