"""The trained policy logged to MLflow as a model, at the end of ``fit`` and when Ctrl+C stops it."""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from callbacks.run_lifecycle import checkpoint_record
from nmbrl.serving import log_policy_model


class PolicyModelLogging(Callback):
    """Logs the agent's policy as the MLflow model ``policy`` of the run (see ``nmbrl.serving``).

    It shows under the run's "Logged models" and loads with
    ``mlflow.pyfunc.load_model("runs:/<run id>/policy")``. Logged when ``fit`` ends, and when
    Ctrl+C stops it (beside the final checkpoint), unless a resumed run made no agent update since
    its checkpoint. Nothing is logged without an MLflow logger.

    Args:
        registered_model_name: Also register the model in the MLflow model registry under this
            name (a new version each time). None (default): no registration.
        enabled: Log the model at all.
    """

    def __init__(self, registered_model_name: str | None = None, enabled: bool = True) -> None:
        self.registered_model_name = registered_model_name
        self.enabled = enabled
        self.resumed_at: int | None = None  # the update count of the checkpoint this fit resumed from

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        self.resumed_at = checkpoint.get("global_step")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.log_model(trainer, pl_module)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt) and trainer.state.fn == "fit":
            self.log_model(trainer, pl_module)

    def log_model(self, trainer: Trainer, pl_module: LightningModule) -> None:
        logger = trainer.logger
        if not (self.enabled and trainer.is_global_zero and isinstance(logger, MLFlowLogger)):
            return
        if getattr(pl_module, "loss_module", None) is None:
            return  # stopped before the networks were built: nothing to log
        if self.resumed_at == trainer.global_step:
            # E.g. a finished run resumed with the same budget: the policy logged when it stopped stands.
            rank_zero_info("no agent update since the checkpoint: the policy is not logged again.")
            return
        try:
            uri = log_policy_model(
                pl_module, checkpoint_record(trainer), logger.experiment.tracking_uri, logger.run_id, self.registered_model_name
            )
        except Exception as error:  # the checkpoint holds the policy too: a failed upload must not lose the run's end
            rank_zero_warn(f"could not log the policy to MLflow ({type(error).__name__}: {error}); the checkpoint still holds it.")
            return
        rank_zero_info(f"policy logged to MLflow as {uri}" + (f", registered as {self.registered_model_name!r}" if self.registered_model_name else ""))
