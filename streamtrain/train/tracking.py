"""An MLflow hook: a run's settings as parameters, each epoch's metrics, and its final checkpoint.

``pip install 'streamtrain[mlflow]'``; mlflow is imported when training begins.

>>> # fit(..., callbacks=[MLflowLogger("file:./mlruns", experiment="digits")])
"""

from __future__ import annotations

import numbers
from typing import Any

from ..errors import StreamtrainError
from .hooks import Hook

__all__ = ["MLflowLogger"]


def _flat(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = str(value)[:500]


class MLflowLogger(Hook):
    """Logs to MLflow: at the start the settings (and the data's path and shape) as parameters, at
    each epoch's end its metrics (step = the epoch), at the end the newest checkpoint as an
    artifact. ``tracking_uri``/``experiment``: where; None keeps MLflow's own defaults."""

    def __init__(self, tracking_uri: str | None = None, experiment: str | None = None, run_name: str | None = None):
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name
        self.run = None

    def on_train_begin(self, trainer):
        try:
            import mlflow
        except ImportError:
            raise StreamtrainError("the MLflow hook needs mlflow: pip install 'streamtrain[mlflow]'") from None
        self.mlflow = mlflow
        if self.tracking_uri:
            mlflow.set_tracking_uri(self.tracking_uri)
        if self.experiment:
            mlflow.set_experiment(self.experiment)
        self.run = mlflow.start_run(run_name=self.run_name)
        params: dict[str, str] = {}
        _flat("", trainer.config.to_dict(), params)
        _flat("data", {"features": trainer.model.net.n_in, "task": trainer.model.task,
                       **{k: trainer.fingerprint.get(k) for k in ("path", "format", "n_rows")}}, params)
        mlflow.log_params(params)

    def on_epoch_end(self, trainer, record):
        metrics = {k: float(v) for k, v in record.items()
                   if isinstance(v, numbers.Number) and not isinstance(v, bool) and k != "epoch"}
        self.mlflow.log_metrics(metrics, step=int(record["epoch"]))

    def on_train_end(self, trainer):
        rundir = getattr(trainer, "rundir", None)
        if rundir is not None:
            from ..io.resolve import list_checkpoints

            rundir.wait()
            newest = list_checkpoints(rundir.path)
            if newest:
                self.mlflow.log_artifact(str(newest[0]), artifact_path="checkpoint")

    def close(self, trainer):
        if self.run is not None:
            self.mlflow.end_run()
            self.run = None
