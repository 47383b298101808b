"""recflow: turn call-recording status callbacks into verified, durable work.

The public names a plugin author needs are re-exported here; everything else
lives in modules named after the pipeline stage they implement.
"""

from recflow.errors import ActionError, ConfigError, RecflowError
from recflow.event import Event
from recflow.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = [
    "ActionError",
    "ConfigError",
    "Event",
    "RecflowError",
    "__version__",
    "hookimpl",
]
