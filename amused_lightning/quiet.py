"""Known-harmless third-party messages, each silenced narrowly by its own text where it is emitted."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

# (start of the message, category): warnings that say nothing true or useful about a run of this package.
HARMLESS_WARNINGS = (
    # torch 2.13 deprecates a class that Lightning 2.6's own _pytree helper still checks against.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # Our DataModule saves and restores its position in the epoch itself (checkpoint key "AmusedDataModule"), so a
    # mid-epoch resume is exact; Lightning only looks for a stateful DataLoader.
    (r"You're resuming from a checkpoint that ended before the epoch ended and your dataloader is not resumable",
     UserWarning),
    # A fresh fit refuses a run folder that holds checkpoints (AmusedCLI.before_fit): only a resumed fit meets one.
    (r"Checkpoint directory .* exists and is not empty", UserWarning),
    # `validate` (or a resumed fit) in another trainer.default_root_dir: the checkpoint callback's own bookkeeping of
    # the old folder is dropped, which changes nothing here (checkpoints are found through default_root_dir).
    (r"The dirpath has changed from", UserWarning),
    # The command table hands LightningCLI the arguments that follow the command name, which sys.argv also holds.
    (r"LightningCLI's args parameter is intended", UserWarning),
    # Under DDP: the held-out scores are torchmetrics means, which average over all processes themselves.
    (r"It is recommended to use `self.log\('val/.*sync_dist=True", UserWarning),
    # Under DDP: the depthwise convolutions' weights (C, 1, 3, 3) differ from their gradient bucket only in the stride
    # of a dimension of size 1, which changes nothing in memory.
    (r"(?s)Grad strides do not match bucket view strides.*grad.sizes\(\) = \[\d+, 1, ", UserWarning),
)

# logger name: start of the message. Filters on the emitting logger, since records do not pass a parent's filters.
HARMLESS_RECORDS = {
    # bitsandbytes, at import on CPUs with AVX512-BF16: a faster 4-bit inference kernel is missing; we use no 4-bit.
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward from kernels-community",
    # kernels (pulled in by transformers >= 5.25), on that same attempt under HF_HUB_OFFLINE=1: a trust check it skips.
    "kernels._internals.hf_hub": "Skipping publisher trust check for 'kernels-community/",
    # Lightning, at every Trainer start: an advertisement for its cloud logger.
    "lightning.pytorch.utilities.rank_zero": "💡 Tip: For seamless cloud logging",
    "lightning.fabric.utilities.rank_zero": "💡 Tip: For seamless cloud logging",
}


class _DropMessage(logging.Filter):
    """Drops the records whose message starts with `prefix`."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def silence_harmless_messages() -> None:
    """Install the filters; loggers need not exist yet (a logger is the same object before and after import)."""
    for message, category in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, prefix in HARMLESS_RECORDS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropMessage(prefix))


@contextmanager
def without_transformers_bars() -> Iterator[None]:
    """Without transformers' progress bars ("Loading weights", "Writing model shards"; one per model loaded or saved):
    noise in our output."""
    from transformers.utils import logging as transformers_logging

    enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            transformers_logging.enable_progress_bar()
