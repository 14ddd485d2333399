"""A Lightning logger that writes the curves of a training loop into an existing
``adapt.tracking.runs.TrackedRun``: it neither starts nor ends the run, names the curves the way
the rest of the run's metrics are named (``train/loss``, ``val/balanced_accuracy``), and a logging
failure mid-training marks the run ``broken`` instead of stopping training."""

from __future__ import annotations

import functools

from adapt.tracking.runs import TrackedRun
from adapt.tracking.store import TrackingError
from adapt.tracking.ui import TRAIN, curve_metric


@functools.cache
def _logger_class():
    from lightning.pytorch.loggers.logger import Logger
    from lightning.pytorch.utilities import rank_zero_only

    class RunLogger(Logger):
        """Lightning's ``Logger`` interface over a ``TrackedRun`` (its client, its run id)."""

        def __init__(self, run: TrackedRun) -> None:
            super().__init__()
            self.run = run

        @property
        def name(self) -> str:
            return self.run.experiment_name

        @property
        def version(self) -> str:
            return self.run.run_id

        @rank_zero_only
        def log_hyperparams(self, params, *args, **kwargs) -> None:  # params are logged once by the caller
            pass

        @rank_zero_only
        def log_metrics(self, metrics, step=None) -> None:
            if self.run.broken:
                return
            try:
                self.run.log_metrics({curve_metric(k, TRAIN): v for k, v in metrics.items()}, step=step or 0)
            except TrackingError as exc:
                self.run.mark_broken(exc)

    return RunLogger


def run_logger(run: TrackedRun):
    """The Lightning logger for ``run``."""
    return _logger_class()(run)
