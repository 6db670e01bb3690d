"""What each run's fork server imports after the code location, before it forks a process per step
(``dagster_project/execution.py``), and ``pixelsift run`` before its first step.

The code location loads without these libraries (tests/test_architecture.py), so the UI's run
worker never pays for them; the steps that need them would each import them again in their own
process. Imported here once per run instead, then frozen (``dagster_project/long_lived.py``), so
that no step process's collections walk them, nor write to (and so copy) the pages they share.
"""

import gc
import importlib

from dagster_project.execution import STEP_LIBRARIES

for _name in STEP_LIBRARIES:
    importlib.import_module(_name)
gc.freeze()
