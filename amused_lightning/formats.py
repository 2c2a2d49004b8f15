"""Names shared by the files we write and the commands that read them: no heavy imports, so `--help` is instant."""

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
"""The LoRA file of an export, under the name diffusers' `load_lora_weights` looks for."""

WEIGHT_CHOICES = ("auto", "ema", "trained")
"""Which weights of a checkpoint to use: the EMA when one was kept ("auto"), the average, or the raw weights."""

SAMPLING_NAME = "sampling.json"
"""The run's validation sampling settings in an export: what `generate` and the model card's snippet draw with."""

BASE_NAME = "base_model.json"
"""The base model an adapters-only export is loaded onto (pretrained, revision, variant)."""

CHECKPOINT_LORA_SUFFIX = ".lora.safetensors"
"""The LoRA file beside a checkpoint of a LoRA run: step=200.ckpt -> step=200.lora.safetensors."""
