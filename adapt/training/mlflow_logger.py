"""A Lightning ``MLFlowLogger`` that writes the curves of a training loop into an existing
``adapt.tracking.runs.TrackedRun`` (it neither starts nor ends the run, and a logging failure
mid-training marks the run ``broken`` instead of stopping training)."""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # adapt.pipelines.retrain pulls in torch; `adapt models ...` must not
    pass

from adapt.tracking.runs import TrackedRun

logger = logging.getLogger(__name__)


@functools.cache
def _logger_class():
    from lightning.pytorch.loggers import MLFlowLogger
    from lightning.pytorch.loggers.logger import rank_zero_experiment
    from lightning.pytorch.utilities import rank_zero_only

    class RunBoundMLFlowLogger(MLFlowLogger):
        """``MLFlowLogger`` bound to an existing ``TrackedRun``."""

        def __init__(self, run: TrackedRun) -> None:
            super().__init__(experiment_name=run.experiment_name, tracking_uri=run.tracking_uri, run_id=run.run_id, log_model=False)
            self._tracked = run
            self._mlflow_client = run.client

        @property
        @rank_zero_experiment
        def experiment(self):
            # MLFlowLogger's own version calls mlflow.set_tracking_uri(), which also rewrites
            # $MLFLOW_TRACKING_URI for the whole process; the run exists already, so skip that.
            if not self._initialized:
                self._experiment_id, self._initialized = self._tracked.experiment_id, True
            return self._mlflow_client

        @rank_zero_only
        def log_hyperparams(self, params) -> None:  # params are logged once by the caller
            pass

        @rank_zero_only
        def log_metrics(self, metrics, step=None) -> None:
            if self._tracked.broken:
                return
            try:
                super().log_metrics(metrics, step)
            except Exception as exc:
                self._tracked.mark_broken(exc)

        @rank_zero_only
        def finalize(self, status: str = "success") -> None:  # the run outlives the Trainer
            pass

    return RunBoundMLFlowLogger


def run_logger(run: TrackedRun):
    """The Lightning logger for ``run``."""
    return _logger_class()(run)
