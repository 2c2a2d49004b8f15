"""The model card (README.md) of an export, as the Hub renders it: YAML front matter, then what the weights are, how
they were trained, sample images and how to load them; read from what the checkpoint recorded of its run."""

from __future__ import annotations

import dataclasses
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from amused_lightning.formats import LORA_WEIGHT_NAME
from amused_lightning.model.components import EMBEDDED
from amused_lightning.model.presets import PRESETS
from amused_lightning.model.sampling import ValidationSampling
from amused_lightning.model.spec import ModelSpec
from amused_lightning.run.checkpoint import RunCheckpoint
from amused_lightning.run.folder import ValidationGrid

CARD_NAME = "README.md"
SAMPLES_NAME = "samples.png"
NOT_RECORDED = "not recorded"
SCHEDULES_WITHOUT_WARMUP = ("constant",)  # model.lr_schedule names whose schedule ignores warmup_steps


@dataclass
class CardFacts:
    """Everything the card says, gathered from a run checkpoint and the export's choices."""

    spec: ModelSpec
    hparams: dict[str, Any]
    data: dict[str, Any]
    run: dict[str, Any]
    optimizer: str | None
    steps: int | None
    weights: str
    merged: bool
    where: str
    sampling: ValidationSampling
    samples: ValidationGrid | None = None
    with_base: bool = True
    """Whether the export holds the base pipeline (else it names the base, which loads by that name)."""

    @classmethod
    def of(cls, run: RunCheckpoint, weights: str, merged: bool, where: str, samples: ValidationGrid | None = None,
           sampling: ValidationSampling | None = None, with_base: bool = True) -> CardFacts:
        """The facts of a run checkpoint and the choices of its export (older checkpoints lack the run record: those
        facts are unknown)."""
        return cls(ModelSpec.from_hparams(run.hparams), dict(run.hparams), dict(run.data), dict(run.run),
                   run.optimizer, run.step, weights, merged, where,
                   sampling or ValidationSampling.of_hparams(run.hparams), samples, with_base)

    @property
    def lora_file(self) -> bool:
        """Whether the export holds the adapters in a LoRA file beside the base pipeline."""
        return not self.merged and self.spec.finetuning.adapters


def hub_id(pretrained: str) -> str | None:
    """`pretrained` when it names a Hub model (not a preset, the embedded toy model or a local folder)."""
    if pretrained in PRESETS or pretrained in EMBEDDED or Path(pretrained).expanduser().exists():
        return None
    return pretrained if not pretrained.startswith((".", "/", "~")) and pretrained.count("/") == 1 else None


def base_license(spec: ModelSpec) -> tuple[str, str]:
    """The license id for the front matter and a sentence saying whose license it is."""
    name = spec.pretrained
    if name in PRESETS:
        return "other", (f"The base model is amused_lightning's `{name}` preset: random weights drawn from seed "
                         f"{spec.seed}, under no upstream license.")
    if name in EMBEDDED:
        return "other", ("The base model is the `toy` model embedded in amused_lightning, trained on generated "
                         "pixel-art images of its toy world, under no upstream license.")
    if name.startswith("amused/"):
        return "openrail++", f"openrail++, the license of the base model [{name}](https://huggingface.co/{name})."
    local = Path(name).expanduser() / CARD_NAME
    license_id = front_matter(local.read_text()).get("license") if local.is_file() else None
    if license_id:
        return str(license_id), f"{license_id}, the license the base model's card ({local}) names."
    return "other", f"The license of the base model `{name}` applies (this export does not know it)."


def front_matter(text: str) -> dict[str, Any]:
    """The YAML block at the top of a card (empty when there is none)."""
    match = re.match(r"---\n(.*?)\n---\n", text, re.DOTALL)
    return (yaml.safe_load(match.group(1)) or {}) if match else {}


def metadata(facts: CardFacts) -> dict[str, Any]:
    """The front matter: what the Hub indexes and links."""
    base = hub_id(facts.spec.pretrained)
    tags = ["text-to-image", "amused", "diffusers", "amused-lightning"] + (["lora"] if facts.lora_file else [])
    meta: dict[str, Any] = {"library_name": "diffusers", "license": base_license(facts.spec)[0], "tags": tags,
                            "pipeline_tag": "text-to-image"}
    if base is not None:
        meta.update(base_model=base, base_model_relation="adapter" if facts.lora_file else "finetune")
    source = source_settings(facts.data)
    path = (source.get("init_args") or {}).get("path")
    if str(source.get("class_path", "")).endswith("HFDataset") and path and hub_id(str(path)):
        meta["datasets"] = [path]
    return meta


def source_settings(data: dict[str, Any]) -> dict[str, Any]:
    """The data source as a config entry (class_path, init_args), whether saved as one or as the object."""
    source = data.get("source") or {}
    return source if isinstance(source, dict) else source.settings()


def settings_group(hparams: dict[str, Any], name: str) -> dict[str, Any]:
    """A group of hyperparameters as a dict, whether saved from a config (a dict) or given as a dataclass."""
    value = hparams.get(name) or {}
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else dict(value)


def data_text(facts: CardFacts) -> str:
    """The data source's class and path (or arguments), and its number of training rows when known."""
    source = source_settings(facts.data)
    args = source.get("init_args") or {}
    where = args.get("path") or ", ".join(f"{k}={v}" for k, v in args.items() if v is not None)
    rows = facts.run.get("train_rows")
    return (f"`{str(source.get('class_path', NOT_RECORDED)).rsplit('.', 1)[-1]}` `{where}`"
            + (f", {rows} training rows" if rows is not None else "")
            + (f", {facts.data['resolution']} px" if facts.data.get("resolution") else ""))


def weights_text(facts: CardFacts) -> str:
    """Which weights the export holds and how the adapters sit in it."""
    decay = facts.run.get("ema_decay")
    which = "the trained weights (no average)"
    if facts.weights == "ema":
        which = f"the EMA of the trained weights (decay {decay:g})" if decay else "the EMA of the trained weights"
    if not facts.spec.finetuning.adapters:
        return which
    if facts.merged:
        return f"{which}, adapters merged into the pipeline weights"
    if facts.with_base:
        return f"{which}, adapters in `{LORA_WEIGHT_NAME}` beside the base pipeline"
    return f"{which}, adapters in `{LORA_WEIGHT_NAME}` for the base `{facts.spec.pretrained}` (not copied here)"


def schedule_text(name: str | None, warmup_steps: int | None) -> str:
    """`cosine schedule, 5 warmup steps`; a schedule that has no warmup (constant) says none."""
    if name in SCHEDULES_WITHOUT_WARMUP:
        return f"{name} schedule (no warmup)"
    return f"{name} schedule, {warmup_steps} warmup steps"


def optimizer_text(facts: CardFacts) -> str:
    """The optimizer class, peak learning rate, weight decay and schedule."""
    run, schedule = facts.run, settings_group(facts.hparams, "lr_schedule")
    parts = [f"`{facts.optimizer or NOT_RECORDED}`"]
    if run.get("lr") is not None:
        parts.append(f"learning rate {run['lr']:g}")
    if run.get("weight_decay") is not None:
        parts.append(f"weight decay {run['weight_decay']:g}")
    if schedule:
        parts.append(schedule_text(schedule.get("name"), schedule.get("warmup_steps")))
    return ", ".join(parts)


def batch_text(facts: CardFacts) -> str:
    """Per-device batch x devices x accumulation = images per optimizer step."""
    batch, run = facts.hparams.get("batch_size"), facts.run
    devices, accumulation = run.get("devices"), run.get("accumulate_grad_batches")
    if None in (batch, devices, accumulation):
        return f"{batch} per device (devices and accumulation {NOT_RECORDED})"
    return f"{batch} per device x {devices} devices x {accumulation} accumulation = {batch * devices * accumulation}"


def training_table(facts: CardFacts) -> str:
    """The run as a two-column table."""
    spec = facts.spec
    revision = f" (revision `{spec.revision}`)" if spec.revision else ""
    rows = [("base model", f"`{spec.pretrained}`{revision}"), ("data", data_text(facts)),
            ("finetuning", spec.finetuning.describe()), ("weights exported", weights_text(facts)),
            ("optimizer", optimizer_text(facts)), ("batch", batch_text(facts)),
            ("steps", f"{facts.steps} optimizer steps" if facts.steps is not None else NOT_RECORDED),
            ("precision", facts.run.get("precision", NOT_RECORDED)), ("seed", str(facts.hparams.get("seed")))]
    return "| | |\n|---|---|\n" + "\n".join(f"| {name} | {value} |" for name, value in rows)


def samples_text(facts: CardFacts) -> str:
    """The sample grid and the prompts in its reading order, or a line saying there is none."""
    if facts.samples is None:
        return "No validation images were drawn before these weights (set `model.validation.prompts`)."
    step, prompts = facts.samples.step, facts.samples.prompts
    settings = ", ".join(f"{key} {value}" for key, value in facts.sampling.pipeline_arguments().items())
    listed = "\n".join(f"{i + 1}. {prompt}" for i, prompt in enumerate(prompts))
    return (f"![validation images at step {step}]({SAMPLES_NAME})\n\nValidation images at optimizer step {step} "
            f"(seed {facts.sampling.seed}; {settings}), left to right, top to bottom; the code under Use draws "
            f"them again:\n\n{listed}")


def base_loading(facts: CardFacts) -> str:
    """The `from_pretrained` line: the export itself, or the base it names (at its revision and variant)."""
    if facts.with_base:
        return f'pipe = AmusedPipeline.from_pretrained("{facts.where}")'
    spec = facts.spec
    extra = "".join(f', {name}="{value}"' for name, value in (("revision", spec.revision), ("variant", spec.variant))
                    if value)
    return f'pipe = AmusedPipeline.from_pretrained("{spec.pretrained}"{extra})  # the base model'


def drawing_code(facts: CardFacts) -> list[str]:
    """Lines that draw with the validation's seed and settings: the grid of samples.png when there is one."""
    sampling = facts.sampling
    settings = ", ".join(f"{key}={value!r}" for key, value in sampling.pipeline_arguments().items())
    seed = f"generator=torch.Generator().manual_seed({sampling.seed})"
    if facts.samples is None:
        prompt = (settings_group(facts.hparams, "validation").get("prompts") or ["a photo"])[0]
        return [f"image = pipe({prompt!r}, {settings}, {seed}).images[0]", 'image.save("image.png")']
    count, columns = len(facts.samples.prompts), min(4, len(facts.samples.prompts))
    return [f"prompts = {facts.samples.prompts!r}",
            f"images = pipe(prompts, {settings}, {seed}).images",
            f"width, height, columns = images[0].width, images[0].height, {columns}",
            f"grid = Image.new(\"RGB\", (columns * width, {-(-count // columns)} * height))",
            "for i, image in enumerate(images):",
            "    grid.paste(image, (i % columns * width, i // columns * height))",
            f'grid.save("{SAMPLES_NAME}")']


def usage_code(facts: CardFacts) -> str:
    """Python that loads the export with diffusers (adapters included) and draws as the run's validation did."""
    imports, loading = facts.spec.finetuning.loading_code(facts.where) if facts.lora_file else ([], [])
    pil = ["from PIL import Image"] if facts.samples is not None else []
    lines = ["import torch", *imports, "from diffusers import AmusedPipeline", *pil, "", base_loading(facts),
             *loading]
    return "\n".join([*lines, *drawing_code(facts)])


def render_card(facts: CardFacts) -> str:
    """The whole card: front matter, then markdown."""
    meta = yaml.safe_dump(metadata(facts), sort_keys=False, allow_unicode=True)
    base = f"`{facts.spec.pretrained}` (aMUSEd)"
    what = f"A finetuned {base} pipeline"
    if facts.lora_file:
        what = (f"LoRA adapters for {base}, with the base pipeline" if facts.with_base else
                f"LoRA adapters for {base} (the base is not copied here: the code under Use loads it by name)")
    title = facts.where.rstrip("/").rsplit("/", 1)[-1]
    sections = {"Training": training_table(facts), "Samples": samples_text(facts),
                "Use": f"```python\n{usage_code(facts)}\n```\n\nOr with amused_lightning: `python -m amused_lightning "
                       'generate "a prompt" --pipeline <this folder> -o pictures/`.',
                "License": base_license(facts.spec)[1]}
    body = "".join(f"\n\n## {name}\n\n{text}" for name, text in sections.items())
    return f"---\n{meta}---\n\n# {title}\n\n{what}, trained with amused_lightning.{body}\n"


def write_card(facts: CardFacts, folder: Path) -> list[Path]:
    """README.md, and samples.png when the run drew validation images at or before the exported step."""
    card = folder / CARD_NAME
    card.write_text(render_card(facts))
    if facts.samples is None:
        return [card]
    return [card, Path(shutil.copyfile(facts.samples.path, folder / SAMPLES_NAME))]
