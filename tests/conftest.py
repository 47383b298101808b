"""Fixtures shared by the test modules; helpers live in tests/*_util.py and tests/emulator.py.

The test plugin (tests/plugins/recflow-testactions) is installed by
`scripts/setup.sh --test` into tests/.plugins, which is put on the path
here, for this process and for the `recflow` processes the tests start.
"""

import os
import sys
from pathlib import Path

_PLUGINS = Path(__file__).parent / ".plugins"
if _PLUGINS.is_dir() and str(_PLUGINS) not in sys.path:
    sys.path.insert(0, str(_PLUGINS))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(_PLUGINS), os.environ.get("PYTHONPATH")])
    )

from emulator import emulator, emulator_server, moto_s3  # noqa: E402, F401
from mail_util import mailbox  # noqa: E402, F401
