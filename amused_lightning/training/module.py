"""The LightningModule: the masked-token objective on an `AmusedModel`, its held-out scores and its optimizer."""

from __future__ import annotations

import logging
import warnings
from contextlib import nullcontext
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import nn
from torchmetrics import MeanMetric

from amused_lightning.data.batch import Batch, has_prompt_embeddings, is_pre_encoded
from amused_lightning.errors import SettingError
from amused_lightning.model.adapters import LoraSettings
from amused_lightning.model.amused import AmusedModel
from amused_lightning.model.encoding import drop_conditioning, encode_image_tokens, encode_prompts, tokenize_prompts
from amused_lightning.model.finetuning import TextEncoderSettings
from amused_lightning.model.memory import on_device, own_host_memory
from amused_lightning.model.spec import ModelSpec
from amused_lightning.run.checkpoint import RunCheckpoint, mark
from amused_lightning.seeding import derive_seed, micro_batch_slot
from amused_lightning.settings import as_settings
from amused_lightning.toy.image_metrics import ImageMetric
from amused_lightning.training.activation_checkpointing import enable_gradient_checkpointing
from amused_lightning.training.heads import enable_masked_head, logits_only_at
from amused_lightning.training.loss import masked_token_loss, masked_token_scores
from amused_lightning.training.masking import apply_mask, random_token_mask, sample_mask_ratios
from amused_lightning.training.optim import (
    check_same_optimizer,
    class_path,
    group_settings,
    lr_schedule,
    parameter_groups,
    reapply_settings,
    with_fused_step,
)
from amused_lightning.training.record import run_record
from amused_lightning.training.settings import (
    LRScheduleSettings,
    MemorySettings,
    ObjectiveSettings,
    ValidationSettings,
)
from amused_lightning.training.validation import context_warning, held_out_mask, held_out_scores

log = logging.getLogger(__name__)

# The frozen VQ model and text encoder are kept in eval mode on purpose.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
# Checkpoints hold the model's trained weights under its own names; Lightning's state dict names them from here.
MODEL = "model."


class AmusedModule(L.LightningModule):
    """Finetunes an aMUSEd transformer by predicting randomly masked VQ image tokens."""

    def __init__(
        self,
        pretrained: str,
        revision: str | None = None,
        variant: str | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_schedule: LRScheduleSettings = LRScheduleSettings(),
        batch_size: int = 1,
        lora: LoraSettings | None = None,
        text_encoder: TextEncoderSettings = TextEncoderSettings(),
        objective: ObjectiveSettings = ObjectiveSettings(),
        memory: MemorySettings = MemorySettings(),
        validation: ValidationSettings = ValidationSettings(),
        image_metrics: list[ImageMetric] | None = None,
        seed: int = 0,
    ):
        """
        Args:
            pretrained: The base model, required: a hub id (amused/amused-256), a local diffusers pipeline
                folder, `toy` (the embedded toy-world model), or a random-weight preset for tests (tiny,
                amused-256-arch, amused-512-arch: no download, nothing learned).
            revision: Hub revision (branch, tag or commit) of `pretrained`.
            variant: Weight file variant of `pretrained`, for example "fp16".
            optimizer: Optimizer class and arguments; applied to two groups, biases/norms/embeddings without decay.
            lr_schedule: Learning-rate schedule, warmup and scaling.
            batch_size: Per-device batch size, for `lr_schedule.scale_lr` (linked to data.batch_size).
            lora: Train a LoRA adapter on the transformer instead of all its weights.
            text_encoder: Whether and how the text encoder trains.
            objective: Masking, conditioning dropout and label smoothing of the masked-token objective.
            memory: Memory and speed levers that leave the loss unchanged.
            validation: Prompts drawn and mask ratios scored at each validation.
            image_metrics: Scorers of the validation images against their prompts, logged as val/<name>.
            seed: Seed of masks and conditioning dropout, and of preset weights (linked to seed_everything).
        """
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "image_metrics"])
        self.image_metrics = list(image_metrics or [])
        self.optimizer_factory = optimizer
        # Hyperparameters keep the groups as given (plain dicts from a config); the module uses the dataclasses.
        self.schedule = as_settings(LRScheduleSettings, lr_schedule)
        self.objective = as_settings(ObjectiveSettings, objective)
        self.memory = as_settings(MemorySettings, memory)
        self.validation = as_settings(ValidationSettings, validation)
        spec = ModelSpec(pretrained, revision, variant, seed, as_settings(LoraSettings, lora),
                         as_settings(TextEncoderSettings, text_encoder))
        self.model = AmusedModel.from_spec(spec)
        self._apply_memory_levers()
        # Checkpoints hold only trained weights; the frozen parts come back from `pretrained`.
        self.strict_loading = False
        # A NaN loss is the guard's to report (guard.py: it stops the run, or counts an fp16 skip), not a warning here;
        # and any NaN check here ("warn", "ignore") would wait for the device at every micro-batch.
        self.train_loss = MeanMetric(nan_strategy="disable")
        self.train_masking_rate = MeanMetric(nan_strategy="disable")
        self.val_losses = nn.ModuleList(MeanMetric() for _ in self.validation.mask_ratios)
        self.val_accuracies = nn.ModuleList(MeanMetric() for _ in self.validation.mask_ratios)
        self.started_at_step: int | None = None  # the optimizer step the fit's training started from
        self.last_validated_step: int | None = None
        self._empty_prompt: tuple[torch.Tensor, torch.Tensor] | None = None
        self._configured_groups: list[dict[str, Any]] = []
        self._saved_optimizer: str | None = None  # the optimizer class of the checkpoint a fit resumes
        self._loaded_step: int | None = None  # the optimizer step of the checkpoint loaded last
        self.train()  # frozen parts in eval mode from the start, so the model summary shows what trains

    def _apply_memory_levers(self) -> None:
        model = self.model
        if self.memory.logits_at_masked_only:
            enable_masked_head(model.transformer)
        if self.memory.gradient_checkpointing:
            enable_gradient_checkpointing(model.transformer)
            if model.spec.text_encoder.train:
                model.text_encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.memory.compile:
            model.transformer.compile()

    def setup(self, stage: str) -> None:
        # Before the strategy places the module: on a GPU the move to the device gives the weights memory of their own.
        if stage == "fit" and self.trainer.strategy.root_device.type == "cpu":
            own_host_memory(param for param in self.model.parameters() if param.requires_grad)

    def train(self, mode: bool = True) -> AmusedModule:
        super().train(mode)
        self.model.vqvae.eval()
        if not self.model.text_encoder_trains:
            self.model.text_encoder.eval()
        return self

    def image_tokens(self, batch: Batch) -> torch.Tensor:
        """The batch's pre-encoded image tokens, else the VQ encoding of its pixels."""
        if is_pre_encoded(batch):
            return batch["image_tokens"].long()
        return encode_image_tokens(self.model.vqvae, batch["pixel_values"], self.memory.vq_chunk_size)

    def prompt_embeddings(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's pre-encoded (hidden states, pooled embedding), else CLIP on its token ids."""
        if has_prompt_embeddings(batch):
            return batch["encoder_hidden_states"], batch["pooled_text_emb"]
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.model.text_encoder_trains):
            return encode_prompts(self.model.text_encoder, batch["input_ids"])

    def empty_prompt_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of "" for conditioning dropout; cached while the text encoder is frozen."""
        trains, text_encoder = self.model.text_encoder_trains, self.model.text_encoder
        if self._empty_prompt is not None and not trains:
            return self._empty_prompt
        input_ids = tokenize_prompts(self.model.tokenizer, [""]).to(self.device)
        # A frozen text encoder may be parked in host memory (FrozenPlacement): it visits the device for this once.
        with torch.set_grad_enabled(torch.is_grad_enabled() and trains), on_device([text_encoder], self.device):
            self._empty_prompt = encode_prompts(text_encoder, input_ids)
        return self._empty_prompt

    def masked_logits(self, tokens: torch.Tensor, mask: torch.Tensor, hidden: torch.Tensor, pooled: torch.Tensor,
                      micro_conds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits for `tokens` with `mask`ed positions hidden, and the labels to score them against."""
        mask = mask.view_as(tokens)
        inputs, labels = apply_mask(tokens, mask, self.model.mask_id)
        transformer, masked_only = self.model.transformer, self.memory.logits_at_masked_only
        with logits_only_at(transformer, mask) if masked_only else nullcontext():
            logits = transformer(inputs, encoder_hidden_states=hidden, pooled_text_emb=pooled, micro_conds=micro_conds)
        return logits, tokens[mask] if masked_only else labels

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        generator = self._micro_batch_generator(batch_idx)
        tokens = self.image_tokens(batch)
        ratios = sample_mask_ratios(tokens.shape[0], self.objective.min_masking_rate, generator, self.device)
        mask = random_token_mask(ratios, tokens[0].numel(), generator)
        hidden, pooled = self.prompt_embeddings(batch)
        objective, smoothing = self.objective, self.objective.label_smoothing
        if objective.cond_dropout_prob > 0:
            drop = torch.rand(tokens.shape[0], generator=generator, device=self.device) < objective.cond_dropout_prob
            hidden, pooled = drop_conditioning(hidden, pooled, *self.empty_prompt_embeddings(), drop)
            if objective.unconditional_label_smoothing is not None:
                smoothing = torch.where(drop, objective.unconditional_label_smoothing, smoothing)
        logits, labels = self.masked_logits(tokens, mask, hidden, pooled, batch["micro_conds"])
        if torch.is_tensor(smoothing) and self.memory.logits_at_masked_only:  # one share per masked token
            smoothing = smoothing.view(-1, 1, 1).expand_as(tokens)[mask.view_as(tokens)]
        loss = masked_token_loss(logits, labels, smoothing)
        self.train_loss.update(loss.detach())
        self.train_masking_rate.update(ratios)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        tokens = self.image_tokens(batch)
        hidden, pooled = self.prompt_embeddings(batch)
        for i, ratio in enumerate(self.validation.mask_ratios):
            mask = held_out_mask(batch["position"], tokens[0].numel(), ratio, i, self.model.spec.seed)
            losses, hits = masked_token_scores(*self.masked_logits(tokens, mask, hidden, pooled, batch["micro_conds"]))
            self.val_losses[i].update(losses)
            self.val_accuracies[i].update(hits)

    def on_validation_epoch_end(self) -> None:
        # The validation images are the ValidationImages callback's (drawn before this hook, in the callbacks' turn).
        scores = held_out_scores(self.validation.mask_ratios, self.val_losses, self.val_accuracies)
        # Loggers get the number of optimizer steps behind these weights, the step the images carry too;
        # self.log (logger off) feeds the progress bar and callbacks such as ModelCheckpoint(monitor="val/loss").
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            for logger in self.loggers:
                logger.log_metrics({k: v.item() for k, v in scores.items()}, step=self.weights_step)
            warning = context_warning(scores["val/context_gain"].item(), self.weights_step) \
                if "val/context_gain" in scores else None
            if warning:
                log.warning(warning)
        self.log("val/loss", scores.pop("val/loss"), prog_bar=True, logger=False)
        self.log_dict(scores, logger=False)
        self.last_validated_step = self.global_step

    @property
    def weights_step(self) -> int:
        """The optimizer steps behind the weights: the fit's step, or that of the checkpoint a `validate` loaded
        (whose own step counter starts at 0)."""
        validating_a_file = self.trainer.state.fn == "validate" and self.trainer.ckpt_path is not None
        return self._loaded_step if validating_a_file and self._loaded_step is not None else self.global_step

    def _micro_batch_generator(self, batch_idx: int) -> torch.Generator:
        slot = micro_batch_slot(batch_idx % self.trainer.accumulate_grad_batches, self.global_rank,
                                self.trainer.world_size)
        # Derived from where the step is, so a resumed run draws what an unbroken one would; 0 where the rank used
        # to be, so one process draws the masks it always drew.
        seed = derive_seed(self.model.spec.seed, 0, self.global_step, slot)
        return torch.Generator(device=self.device).manual_seed(seed)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Once per optimizer step: the loss averaged over all micro-batches (and devices) it accumulated.
        # Not prog_bar: Lightning would copy it to the host at every step; the progress line reads it when it prints.
        self.log("train/loss", self.train_loss.compute())
        self.log("train/masking_rate", self.train_masking_rate.compute())
        self.log("train/lr", optimizer.param_groups[0]["lr"])
        self.train_loss.reset()
        self.train_masking_rate.reset()

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if self.memory.release_gradients:
            # Lightning zeroes them only after the next step's forward: freed now, they sit through neither that
            # forward nor validation. The next backward starts from None either way, so no weight changes.
            optimizer.zero_grad(set_to_none=True)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.build_optimizer()
        if self.schedule.scale_lr:
            factor = self.hparams.batch_size * self.trainer.world_size * self.trainer.accumulate_grad_batches
            for group in optimizer.param_groups:
                group["lr"] *= factor
        scheduler = lr_schedule(self.schedule.name, optimizer, self.schedule.warmup_steps,
                                int(self.trainer.estimated_stepping_batches))
        self._configured_groups = group_settings(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_start(self) -> None:
        self.started_at_step = self.global_step
        # A checkpoint's optimizer and scheduler states carry its learning rate and settings: the configured ones win.
        if self.trainer.ckpt_path is not None:
            check_same_optimizer(self._saved_optimizer, self.optimizers(use_pl_optimizer=False))
            for line in reapply_settings(self.optimizers(use_pl_optimizer=False), self.lr_schedulers(),
                                         self._configured_groups):
                log.info(line)

    def build_optimizer(self) -> torch.optim.Optimizer:
        """The configured optimizer over the trained parameters, in weight-decay groups; torch's Adam and AdamW take
        their fused step unless told otherwise (`with_fused_step`)."""
        model = self.model
        return with_fused_step(self.optimizer_factory(parameter_groups([model.transformer, model.text_encoder],
                                                                       model.spec.finetuning.no_decay)))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trained = self.model.trained_keys()
        checkpoint["state_dict"] = {key[len(MODEL):]: value for key, value in checkpoint["state_dict"].items()
                                    if key.startswith(MODEL) and key[len(MODEL):] in trained}
        mark(checkpoint, class_path(self.optimizers(False)), run_record(self.trainer))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        run = RunCheckpoint.of(checkpoint)
        self._saved_optimizer, self._loaded_step = run.optimizer, checkpoint.get("global_step")
        missing = self.model.trained_keys() - set(run.trained)
        if missing:
            raise SettingError(f"the checkpoint lacks {len(missing)} trained weights of this model (for example "
                               f"{sorted(missing)[:3]}): it was written by a different model or finetuning mode")
        checkpoint["state_dict"] = {MODEL + key: value for key, value in run.trained.items()}
