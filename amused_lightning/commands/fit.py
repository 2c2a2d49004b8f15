"""`fit`: LightningCLI with aMUSEd's checkpointing, EMA, placement, guard, preemption, validation images, throughput
and export callbacks, running the whole of a fit (`training.fit`); `validate` parses as it does."""

from __future__ import annotations

import sys
from argparse import ArgumentError
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ModelSummary, ProgressBar
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from amused_lightning.callbacks.checkpoint_lora import LoraCheckpoint
from amused_lightning.callbacks.ema import EMA
from amused_lightning.callbacks.final_export import FinalExport
from amused_lightning.callbacks.guard import NonFiniteGuard
from amused_lightning.callbacks.placement import FrozenPlacement
from amused_lightning.callbacks.preemption import Preemption
from amused_lightning.callbacks.throughput import Throughput
from amused_lightning.callbacks.validation_images import ValidationImages
from amused_lightning.commands.early_checks import check_optimizer, check_resolution, restart_switched_class
from amused_lightning.commands.parse_errors import explain, given_flags, option_flags, user_error_within
from amused_lightning.commands.trainer_checks import check_trainer_settings
from amused_lightning.data import AmusedDataModule
from amused_lightning.errors import SettingError, user_error_types
from amused_lightning.progress import PartsSummary, StepProgress, held_out_table, scores_table
from amused_lightning.run.folder import RunFolder
from amused_lightning.run.lock import RunLock, is_first_process, lock_run_folder
from amused_lightning.threads import set_cpu_threads
from amused_lightning.training.fit import fit as fit_run
from amused_lightning.training.module import AmusedModule
from amused_lightning.training.resume import check_ckpt_path, run_logger, validate_logger


def batches_between_validations(validation_steps: int, accumulate_grad_batches: int) -> int:
    """Lightning counts validation intervals in batches; `validation_steps` counts optimizer steps."""
    if validation_steps < 1:
        raise SettingError(f"validation_steps={validation_steps} must be at least 1 "
                           "(to turn validation off, set trainer.limit_val_batches: 0)")
    return validation_steps * accumulate_grad_batches


def checkpoint_dir(default_root_dir: str | None) -> str:
    """Checkpoints live in a fixed folder of the run, so `--ckpt_path last` finds them after a restart."""
    return str(RunFolder(default_root_dir).checkpoints)


def given_callbacks(trainer_config: dict[str, Any]) -> list[Callback]:
    """trainer.callbacks as a list."""
    given = trainer_config.get("callbacks") or []
    return given if isinstance(given, list) else [given]


def display_callbacks(trainer_config: dict[str, Any]) -> list[Callback]:
    """Progress in optimizer steps, and a model summary sent through `logging` (so -q hides it), unless turned off
    or given in trainer.callbacks."""
    given, added = given_callbacks(trainer_config), []
    if trainer_config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in given):
        added.append(StepProgress())
    if trainer_config.get("enable_model_summary") is not False and not any(isinstance(c, ModelSummary) for c in given):
        added.append(PartsSummary(max_depth=2))  # the model's parts, each with what of it trains
    return added


class AmusedCLI(LightningCLI):
    """LightningCLI whose checkpoints keep the newest K by step, plus `last`, in <default_root_dir>/checkpoints (each
    with its LoRA file in a LoRA run); one `fit` at a time per run folder."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.run_lock: RunLock | None = None
        try:
            super().__init__(*args, **kwargs)  # parses, builds and runs the subcommand
        finally:
            if self.run_lock is not None:
                self.run_lock.release()

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # test and predict have no meaning for this model: only the commands that work are offered.
        return {name: keys for name, keys in LightningCLI.subcommands().items() if name in ("fit", "validate")}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(LoraCheckpoint, "checkpoint")
        parser.add_lightning_class_args(FinalExport, "export")
        parser.add_lightning_class_args(EMA, "ema")
        parser.add_lightning_class_args(FrozenPlacement, "placement")
        parser.add_lightning_class_args(NonFiniteGuard, "guard")
        parser.add_lightning_class_args(ValidationImages, "image_logging")
        parser.add_lightning_class_args(Throughput, "throughput")
        parser.add_lightning_class_args(Preemption, "preemption")  # after "checkpoint": see Preemption
        parser.add_argument("--validation_steps", type=int, default=100,
                            help="Optimizer steps between validations (held-out loss and images); also at the end.")
        parser.add_argument("--allow_tf32", type=bool, default=False,
                            help="Let fp32 matmuls and convolutions use TF32 tensor cores (Ampere and later).")
        if "verbose" in parser.get_defaults():
            parser.set_defaults({"verbose": False})  # `validate` prints the held-out scores itself (after_validate)
        parser.set_defaults({
            "trainer.check_val_every_n_epoch": None,
            "trainer.num_sanity_val_steps": 0,
            # no_grad rather than inference mode: metric states made in a validate() stay usable in a later fit.
            "trainer.inference_mode": False,
            "checkpoint.every_n_train_steps": 500,
            "checkpoint.save_top_k": -1,
            "checkpoint.monitor": "step",
            "checkpoint.mode": "max",
            "checkpoint.save_last": True,
            "checkpoint.filename": "{step}",
            "trainer.log_every_n_steps": 1,
        })
        parser.link_arguments("trainer.default_root_dir", "checkpoint.dirpath", compute_fn=checkpoint_dir)
        parser.link_arguments(("validation_steps", "trainer.accumulate_grad_batches"), "trainer.val_check_interval",
                              compute_fn=batches_between_validations)
        parser.link_arguments("data.batch_size", "model.batch_size")
        parser.link_arguments("seed_everything", "model.seed")
        parser.link_arguments("seed_everything", "data.seed")

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse; a mistake becomes one line naming the setting (and the nearest valid names), and a data source
        class switched on the command line does not keep the config's other class's settings."""
        args = [str(arg) for arg in (sys.argv[1:] if args is None else args)]
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as error:
            raise ArgumentError(None, explain(str(error), option_flags(parser, args), given_flags(args))) from None
        restart_switched_class(self.config.get(self.config.get("subcommand")) or self.config, args, "data.source")

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as error:  # a constructor's own refusal, wrapped by the parser: say only that
            ours = user_error_within(error, user_error_types())
            if ours is None or ours is error:
                raise
            raise ours from None

    def before_instantiate_classes(self) -> None:
        check_trainer_settings(self._get(self.config, "trainer"))
        set_cpu_threads()  # before the model loads: loading computes too
        model, data = self._get(self.config, "model"), self._get(self.config, "data")
        check_optimizer(model.get("optimizer"))
        check_resolution(data.get("resolution"), model.get("pretrained"), model.get("revision"))
        # A process-wide switch, so it belongs to the entry point rather than to the model.
        if self._get(self.config, "allow_tf32"):  # _get: also without a subcommand (cli_main(run=False))
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        # Before the model loads: a second run into a busy folder fails at once.
        if self.subcommand == "fit" and is_first_process():
            root = self._get(self.config, "trainer", default={}).get("default_root_dir") or "."
            self.run_lock = lock_run_folder(root)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The Trainer, with our progress display and summary; for `fit` without a trainer.logger given, one
        TensorBoard run across resumes, for `validate` a TensorBoard run of its own (a given logger, or list of them,
        is used as it is)."""
        config = self._get(self.config_init, "trainer", default={})
        added = display_callbacks(config)
        kwargs.setdefault("callbacks", [*given_callbacks(config), *added])
        if any(isinstance(c, ModelSummary) for c in added):
            kwargs.setdefault("enable_model_summary", False)  # ours is in the list: Lightning need not add its own
        if config.get("logger") in (None, True):
            folder = RunFolder(config.get("default_root_dir"))
            if self.subcommand == "fit":
                resuming = self._get(self.config, "ckpt_path") is not None
                kwargs.setdefault("logger", run_logger(folder, resuming))
            elif self.subcommand == "validate":
                kwargs.setdefault("logger", validate_logger(folder))
        return super().instantiate_trainer(**kwargs)

    def fit(self, model: LightningModule, datamodule: LightningDataModule, ckpt_path: str | None = None,
            **kwargs: Any) -> None:
        """The subcommand `fit`: the whole of a fit, as a Python user runs it (LightningCLI calls this in place of
        `Trainer.fit`)."""
        fit_run(self.trainer, model, datamodule, ckpt_path)

    def before_validate(self) -> None:
        self.datamodule.connect(self.model.model.frozen_encoders())
        check_ckpt_path(self.config[self.subcommand].get("ckpt_path"))

    def after_validate(self) -> None:
        ckpt_path = self.config[self.subcommand].get("ckpt_path")
        if self.trainer.is_global_zero and "val/loss" in self.trainer.callback_metrics:
            images = next((c.scores for c in self.trainer.callbacks if isinstance(c, ValidationImages)), {})
            print(f"held-out scores of {ckpt_path or 'the initial weights'}:\n"
                  f"{held_out_table(self.trainer.callback_metrics)}" + (f"\n{scores_table(images)}" if images else ""))


def cli_main(args: list[str] | None = None, run: bool = True, cli_class: type[AmusedCLI] = AmusedCLI) -> AmusedCLI:
    """`fit` or `validate`; `args` lets tests drive the CLI without a subprocess; `cli_class` lets `check-data`
    parse exactly as `fit` does."""
    return cli_class(AmusedModule, AmusedDataModule, seed_everything_default=0, args=args, run=run,
                     auto_configure_optimizers=False,
                     save_config_kwargs={"overwrite": True},
                     # Parse errors raise, for the command table to report as one line (not 100 lines of usage).
                     parser_kwargs={"exit_on_error": False, "fit": {"exit_on_error": False},
                                    "validate": {"exit_on_error": False}})


def main(args: list[str]) -> AmusedCLI:
    """The `fit` command."""
    return cli_main(["fit", *args])

