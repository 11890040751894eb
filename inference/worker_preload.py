"""What every GPU worker imports, imported once by the fork server that starts the workers (inference.queues.local).

torch, diffusers and transformers take about 15 s of CPU to import: paid here once per bot (or CLI, or agent)
process, so that a worker restarted after a crash or a hang, or a second worker, starts in a fork. The libraries
are quietened first, as the worker quietens them, so that their import-time warnings reach no log. Nothing here
touches the GPU: CUDA is initialised in each worker, after its fork.
"""

from inference.worker import _quiet_libraries

_quiet_libraries()

from inference.engine.lane_engine import LaneEngine  # noqa: E402, F401
from inference.models.loading import load_models  # noqa: E402, F401
from inference.safety import load_checker  # noqa: E402, F401
