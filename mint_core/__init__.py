"""MINT: transfer knowledge from multimodal biomedical teachers into unimodal LLMs.

The core is small: the data types (:mod:`mint_core.types`), the component interfaces
(:mod:`mint_core.components`), the hook specs (:mod:`mint_core.hookspecs`), the registry, the
run configuration and the pipeline. Everything else is a plugin.
"""

from mint_core.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "__version__"]
