"""recflow-transcribe: a recflow plugin that transcribes recordings offline.

The plugin itself is `recflow_transcribe.plugin` (entry point `transcribe`
in the `recflow` group); engines are in `recflow_transcribe.engines`.
"""

from recflow_transcribe.engines import Engine, Transcript, register_engine

__version__ = "0.1.0"

__all__ = ["Engine", "Transcript", "__version__", "register_engine"]
