"""The LightningModule: the masked-token objective on aMUSEd, orchestrating the pure functions."""

from __future__ import annotations

import warnings
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from PIL import Image
from torch import nn
from torchmetrics import MeanMetric

from amused_lightning.adapters import LoraSettings, TextEncoderLoraSettings, add_lora, check_lora_settings
from amused_lightning.checkpointing import enable_gradient_checkpointing
from amused_lightning.components import Components, load_components
from amused_lightning.ema import EmaSettings, TrainedWeightsEMA
from amused_lightning.encoding import drop_conditioning, encode_image_tokens, encode_prompts, tokenize_prompts
from amused_lightning.generation import GenerationSettings, generate_images
from amused_lightning.heads import enable_masked_head, logits_only_at
from amused_lightning.image_metrics import ImageMetric, evaluate_image_metrics
from amused_lightning.loss import masked_token_loss, masked_token_scores
from amused_lightning.masking import apply_mask, random_token_mask, sample_mask_ratios
from amused_lightning.optim import lr_schedule, parameter_groups
from amused_lightning.placement import AUTOCAST_DTYPES, cast_frozen_autocast_layers, unused_frozen_parts
from amused_lightning.seeding import derive_seed
from amused_lightning.settings import as_settings, check_model_settings
from amused_lightning.validation import held_out_mask, held_out_scores, log_validation_images, save_validation_images

# The frozen VQ model and text encoder are kept in eval mode on purpose.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")


CHECKPOINT_MARK = "amused_lightning"


class AmusedModule(L.LightningModule):
    """Finetunes an aMUSEd transformer by predicting randomly masked VQ image tokens."""

    def __init__(
        self,
        pretrained: str = "tiny",
        revision: str | None = None,
        variant: str | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: str = "constant",
        lr_warmup_steps: int = 500,
        scale_lr: bool = False,
        batch_size: int = 1,
        lora: LoraSettings | None = None,
        train_text_encoder: bool = False,
        text_encoder_lora: TextEncoderLoraSettings | None = None,
        ema: EmaSettings | None = None,
        min_masking_rate: float = 0.0,
        cond_dropout_prob: float = 0.0,
        vq_chunk_size: int | None = None,
        gradient_checkpointing: bool = False,
        logits_at_masked_only: bool = True,
        offload_frozen: bool = True,
        frozen_in_compute_dtype: bool = True,
        allow_tf32: bool = False,
        compile: bool = False,
        validation_prompts: list[str] | None = None,
        generation: GenerationSettings | None = None,
        val_mask_ratios: list[float] | None = None,
        image_metrics: list[ImageMetric] | None = None,
        seed: int = 0,
    ):
        """
        Args:
            pretrained: Hub id (amused/amused-256), local pipeline folder, or preset (tiny, amused-256-arch,
                amused-512-arch: random weights, no download).
            revision: Hub revision (branch, tag or commit) of `pretrained`.
            variant: Weight file variant of `pretrained`, for example "fp16".
            optimizer: Optimizer class and arguments; applied to two groups, biases/norms/embeddings without decay.
            lr_scheduler: One of constant, constant_with_warmup, linear, cosine, cosine_with_restarts, polynomial.
            lr_warmup_steps: Warmup length in optimizer steps.
            scale_lr: Multiply the learning rate by batch size x devices x accumulation steps.
            batch_size: Per-device batch size, for `scale_lr` (linked to data.batch_size).
            lora: Train a LoRA adapter on the transformer instead of all its weights.
            train_text_encoder: Train the text encoder too: fully, or its LoRA adapter if `text_encoder_lora` is set.
            text_encoder_lora: LoRA settings for the text encoder (needs `train_text_encoder`).
            ema: Keep an exponential moving average of the trained weights, used for validation and export.
            min_masking_rate: Lower bound of the per-image mask ratio.
            cond_dropout_prob: Probability that a sample trains on the empty prompt instead of its own.
            vq_chunk_size: Images per VQ encoder call (bounds its activation memory); all at once when unset.
            gradient_checkpointing: Recompute transformer activations in backward to save memory.
            logits_at_masked_only: Evaluate the output head only where the loss needs it (same loss, less memory).
            offload_frozen: On a single device, keep frozen parts a step does not use (the VQ decoder; the VQ encoder
                and text encoder when batches are pre-encoded) in CPU memory, back on the device for validation.
            frozen_in_compute_dtype: Under 16-mixed/bf16-mixed, store frozen Linear/Conv2d weights of the
                transformer and text encoder in that dtype (autocast computes with exactly those values).
            allow_tf32: Let fp32 matmuls and convolutions use TF32 tensor cores (Ampere and later; the VQ encoder).
            compile: Compile the transformer with torch.compile.
            validation_prompts: Prompts whose images are generated at each validation (fixed seed).
            generation: Sampling settings of those images (AmusedPipeline's defaults when unset).
            val_mask_ratios: Mask ratios of the held-out loss (default 0.25, 0.5, 0.75, 1.0).
            image_metrics: Scorers of the validation images against their prompts, logged as val/<name>.
            seed: Seed of masks and conditioning dropout, and of preset weights (linked to seed_everything).
        """
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "image_metrics"])
        self.image_metrics = list(image_metrics or [])
        self.optimizer_factory = optimizer
        # Hyperparameters store these as dicts (checkpoints stay plain data); the module uses the dataclasses.
        self.lora = as_settings(LoraSettings, lora)
        self.text_encoder_lora = as_settings(TextEncoderLoraSettings, text_encoder_lora)
        ema = as_settings(EmaSettings, ema)
        self.generation = as_settings(GenerationSettings, generation) or GenerationSettings()
        self.validation_prompts = list(validation_prompts or [])
        self.val_mask_ratios = list(val_mask_ratios or [0.25, 0.5, 0.75, 1.0])
        check_model_settings(self.hparams, ema, self.generation, self.val_mask_ratios)
        parts = load_components(pretrained, revision, variant, seed=seed)
        self.transformer, self.vqvae, self.text_encoder = parts.transformer, parts.vqvae, parts.text_encoder
        self.tokenizer, self.noise_scheduler = parts.tokenizer, parts.scheduler
        self._choose_trained_weights(parts)
        if compile:
            self.transformer.compile()
        self.ema = TrainedWeightsEMA(self, ema) if ema is not None else None
        # Checkpoints hold only trained weights; the frozen parts come back from `pretrained`.
        self.strict_loading = False
        self.train_loss, self.train_masking_rate = MeanMetric(), MeanMetric()
        self.val_losses = nn.ModuleList(MeanMetric() for _ in self.val_mask_ratios)
        self.val_accuracies = nn.ModuleList(MeanMetric() for _ in self.val_mask_ratios)
        self._validation_context = ExitStack()
        self.last_validated_step: int | None = None
        self._empty_prompt: tuple[torch.Tensor, torch.Tensor] | None = None
        self._ema_step = 0
        self.frozen_weights_cast = False
        self._frozen_parked = False

    def _choose_trained_weights(self, parts: Components) -> None:
        """Freeze what does not train, add adapters, and set up gradient checkpointing."""
        hp = self.hparams
        parts.vqvae.requires_grad_(False)
        parts.text_encoder.requires_grad_(hp.train_text_encoder and self.text_encoder_lora is None)
        if self.text_encoder_lora is not None:
            check_lora_settings(self.text_encoder_lora, parts.text_encoder, "model.text_encoder_lora")
            add_lora(parts.text_encoder, self.text_encoder_lora)
        if self.lora is not None:
            check_lora_settings(self.lora, parts.transformer, "model.lora")
            add_lora(parts.transformer, self.lora)
        if hp.logits_at_masked_only:
            enable_masked_head(parts.transformer)
        if hp.gradient_checkpointing:
            enable_gradient_checkpointing(parts.transformer)
            if hp.train_text_encoder:
                parts.text_encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    @property
    def mask_id(self) -> int:
        return self.transformer.config.vocab_size - 1

    def train(self, mode: bool = True) -> AmusedModule:
        super().train(mode)
        self.vqvae.eval()
        if not self.text_encoder_trains:
            self.text_encoder.eval()
        return self

    def image_tokens(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pre-encoded `image_tokens` of the batch, else the VQ encoding of its `pixel_values`."""
        if "image_tokens" in batch:
            return batch["image_tokens"].long()
        return encode_image_tokens(self.vqvae, batch["pixel_values"], self.hparams.vq_chunk_size)

    def prompt_embeddings(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-encoded (`encoder_hidden_states`, `pooled_text_emb`) of the batch, else CLIP on its `input_ids`."""
        if "encoder_hidden_states" in batch:
            return batch["encoder_hidden_states"], batch["pooled_text_emb"]
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.text_encoder_trains):
            return encode_prompts(self.text_encoder, batch["input_ids"])

    @property
    def text_encoder_trains(self) -> bool:
        return any(p.requires_grad for p in self.text_encoder.parameters())

    def empty_prompt_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of "" for conditioning dropout; cached while the text encoder is frozen."""
        if self._empty_prompt is not None and not self.text_encoder_trains:
            return self._empty_prompt
        input_ids = tokenize_prompts(self.tokenizer, [""]).to(self.device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.text_encoder_trains):
            self._empty_prompt = encode_prompts(self.text_encoder, input_ids)
        return self._empty_prompt

    def masked_logits(self, tokens: torch.Tensor, mask: torch.Tensor, hidden: torch.Tensor, pooled: torch.Tensor,
                      micro_conds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits for `tokens` with `mask`ed positions hidden, and the labels to score them against."""
        mask = mask.view_as(tokens)
        inputs, labels = apply_mask(tokens, mask, self.mask_id)
        masked_only = self.hparams.logits_at_masked_only
        with logits_only_at(self.transformer, mask) if masked_only else nullcontext():
            logits = self.transformer(inputs, encoder_hidden_states=hidden, pooled_text_emb=pooled,
                                      micro_conds=micro_conds)
        return logits, tokens[mask] if masked_only else labels

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        generator = self._micro_batch_generator(batch_idx)
        tokens = self.image_tokens(batch)
        ratios = sample_mask_ratios(tokens.shape[0], self.hparams.min_masking_rate, generator, self.device)
        mask = random_token_mask(ratios, tokens[0].numel(), generator)
        hidden, pooled = self.prompt_embeddings(batch)
        if self.hparams.cond_dropout_prob > 0:
            drop = torch.rand(tokens.shape[0], generator=generator, device=self.device) < self.hparams.cond_dropout_prob
            hidden, pooled = drop_conditioning(hidden, pooled, *self.empty_prompt_embeddings(), drop)
        loss = masked_token_loss(*self.masked_logits(tokens, mask, hidden, pooled, batch["micro_conds"]))
        self.train_loss.update(loss.detach())
        self.train_masking_rate.update(ratios)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        tokens = self.image_tokens(batch)
        hidden, pooled = self.prompt_embeddings(batch)
        for i, ratio in enumerate(self.val_mask_ratios):
            mask = held_out_mask(batch["position"], tokens[0].numel(), ratio, i, self.hparams.seed)
            losses, hits = masked_token_scores(*self.masked_logits(tokens, mask, hidden, pooled,
                                                                   batch["micro_conds"]))
            self.val_losses[i].update(losses)
            self.val_accuracies[i].update(hits)

    def on_validation_epoch_start(self) -> None:
        if self.ema is not None:
            self._validation_context.enter_context(self.ema.swapped_in(self))

    def on_validation_epoch_end(self) -> None:
        self._log_held_out_scores()
        if self.validation_prompts and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            with self.trainer.precision_plugin.forward_context():
                images = self.generate(self.validation_prompts, seed=self.hparams.seed)
            folder = Path(self.trainer.default_root_dir) / "validation"
            save_validation_images(folder, self.global_step, self.validation_prompts, images)
            log_validation_images(self.loggers, self.global_step, self.validation_prompts, images)
            scores = evaluate_image_metrics(self.image_metrics, self.validation_prompts, images)
            for logger in self.loggers if scores else []:
                logger.log_metrics(scores, step=self.global_step)
        self._validation_context.close()
        self.last_validated_step = self.global_step

    def _log_held_out_scores(self) -> None:
        scores = held_out_scores(self.val_mask_ratios, self.val_losses, self.val_accuracies)
        # Loggers get the number of optimizer steps behind these weights, the step the images carry too;
        # self.log (logger off) feeds the progress bar and callbacks such as ModelCheckpoint(monitor="val/loss").
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            for logger in self.loggers:
                logger.log_metrics({k: v.item() for k, v in scores.items()}, step=self.global_step)
        self.log("val/loss", scores.pop("val/loss"), prog_bar=True, logger=False)
        self.log_dict(scores, logger=False)

    def generate(self, prompts: list[str], settings: GenerationSettings | None = None, seed: int = 0,
                 resolution: int | None = None) -> list[Image.Image]:
        """Images for `prompts`, sampled as AmusedPipeline does with a generator seeded by `seed`."""
        return generate_images(self.transformer, self.vqvae, self.text_encoder, self.tokenizer, prompts,
                               settings or self.generation, seed, resolution, self.mask_id)

    def _micro_batch_generator(self, batch_idx: int) -> torch.Generator:
        micro_batch = batch_idx % self.trainer.accumulate_grad_batches
        # Derived from where the step is, so a resumed run draws what an unbroken one would.
        seed = derive_seed(self.hparams.seed, self.global_rank, self.global_step, micro_batch)
        return torch.Generator(device=self.device).manual_seed(seed)

    def on_fit_start(self) -> None:
        if self.hparams.allow_tf32:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        dtype = AUTOCAST_DTYPES.get(str(self.trainer.precision))
        # Sharding strategies (FSDP, DeepSpeed) own the parameters' storage: leave it to them.
        unsharded = isinstance(self.trainer.strategy, (SingleDeviceStrategy, DDPStrategy))
        if self.hparams.frozen_in_compute_dtype and dtype is not None and unsharded:
            self.frozen_weights_cast = self.cast_frozen_weights(dtype) > 0

    def cast_frozen_weights(self, dtype: torch.dtype) -> int:
        """Store frozen Linear/Conv2d weights of the transformer and text encoder in `dtype`; how many changed."""
        # The VQ model is left in fp32: it runs outside autocast (it yields NaNs in fp16).
        return sum(cast_frozen_autocast_layers(part, dtype) for part in (self.transformer, self.text_encoder))

    def frozen_parts_unused_by(self, batch: dict) -> list[nn.Module]:
        """Frozen submodules a training step on `batch` never runs."""
        return unused_frozen_parts(self.vqvae, self.text_encoder, self.text_encoder_trains, batch)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Once per stretch of training (validation brings the parts back). One process only: DDP broadcasts buffers
        # to every rank's device, and would meet them on the CPU.
        if (self.hparams.offload_frozen and not self._frozen_parked
                and isinstance(self.trainer.strategy, SingleDeviceStrategy)):
            if "encoder_hidden_states" in batch and self.hparams.cond_dropout_prob > 0:
                # Encoded while the text encoder is still on the device, in the compute dtype as in a step.
                with self.trainer.precision_plugin.forward_context():
                    self.empty_prompt_embeddings()
            for part in self.frozen_parts_unused_by(batch):
                part.to("cpu")
            self._frozen_parked = True

    def on_validation_start(self) -> None:
        self._bring_back_frozen_parts()

    def on_train_end(self) -> None:
        self._bring_back_frozen_parts()

    def _bring_back_frozen_parts(self) -> None:
        # Validation decodes images and may encode: the frozen parts return to the training device.
        self.vqvae.to(self.device)
        self.text_encoder.to(self.device)
        self._frozen_parked = False

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None and self.global_step > self._ema_step:
            self.ema.update(self, self.global_step)
            self._ema_step = self.global_step

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Once per optimizer step: the loss averaged over all micro-batches (and devices) it accumulated.
        self.log("train/loss", self.train_loss.compute(), prog_bar=True)
        self.log("train/masking_rate", self.train_masking_rate.compute())
        self.log("train/lr", optimizer.param_groups[0]["lr"])
        self.train_loss.reset()
        self.train_masking_rate.reset()

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.build_optimizer()
        if self.hparams.scale_lr:
            factor = self.hparams.batch_size * self.trainer.world_size * self.trainer.accumulate_grad_batches
            for group in optimizer.param_groups:
                group["lr"] *= factor
        scheduler = lr_schedule(self.hparams.lr_scheduler, optimizer, self.hparams.lr_warmup_steps,
                                int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def build_optimizer(self) -> torch.optim.Optimizer:
        """The configured optimizer over the trained parameters, in weight-decay groups."""
        return self.optimizer_factory(parameter_groups([self.transformer, self.text_encoder]))

    def trained_state_keys(self) -> set[str]:
        """State-dict keys of the parameters being trained."""
        return {name for name, param in self.named_parameters() if param.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keys = self.trained_state_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keys}
        checkpoint[CHECKPOINT_MARK] = {"format": 1, "ema_step": self._ema_step}
        if self.ema is not None:
            checkpoint["ema"] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if CHECKPOINT_MARK not in checkpoint:
            raise ValueError("not an amused_lightning checkpoint (it lacks the amused_lightning entry)")
        missing = self.trained_state_keys() - set(checkpoint.get("state_dict", {}))
        if missing:
            raise ValueError(f"the checkpoint lacks {len(missing)} trained weights of this model (for example "
                             f"{sorted(missing)[:3]}): it was written by a different model or finetuning mode")
        self._ema_step = checkpoint[CHECKPOINT_MARK]["ema_step"]
        if self.ema is not None:
            # A run that turns EMA on when resuming starts the average from the checkpoint's weights.
            self.ema.load_state_dict(checkpoint.get("ema") or checkpoint["state_dict"])
