"""The benchmark scripts stay runnable, cover every row of the seed tables, and count memory right (no timing is
asserted here)."""

import pytest
from static_memory import PIXEL_KEYS, PRE_ENCODED_KEYS, measure

from benchmark import Row, build_module, cpu_table, seed_rows, select_rows


def test_benchmark_covers_every_seed_table_row():
    rows = {row.name: row for row in seed_rows()}
    assert len(rows) == 21
    assert rows["minecraft-lora-1x8"].seed_gb == 5.6 and rows["minecraft-lora-1x8"].resolution == 512
    assert rows["nouns-full-8x1"].seed_gb == 19.7 and rows["nouns-full-8x1"].checkpointing
    assert rows["styledrop-512-1x1"].lora_alpha == 1.0 and not rows["styledrop-512-1x1"].checkpointing
    assert rows["mfu-target-256-full-16x1-bf16"].precision == "bf16-mixed"


def test_cpu_mode_produces_a_table():
    table = cpu_table(["tiny"], steps=1, warmup=1).splitlines()
    assert table[0].startswith("| preset") and table[2].startswith("| tiny | 64 | 8 |")


def test_an_unknown_row_name_is_refused_with_the_names_there_are():
    with pytest.raises(ValueError, match="no seed row is named nouns-ful-8x1; rows: nouns-full-8x1"):
        select_rows(["nouns-full-8x1", "nouns-ful-8x1"])
    assert [row.name for row in select_rows(["minecraft-lora-1x8"])] == ["minecraft-lora-1x8"]


@pytest.mark.parametrize("mode, state_bytes_per_weight", [("full", 8), ("lora", 8), ("8bit", None)])
def test_static_memory_counts_trained_weights_gradients_and_optimizer_state(mode, state_bytes_per_weight):
    module = build_module(Row("tiny", "tiny", 64, mode, 1, 1, None))
    transformer_bytes = sum(t.numel() * t.element_size() for t in module.model.transformer.state_dict().values())
    trained = sum(p.numel() for p in module.parameters() if p.requires_grad)
    memory = measure(module, "16-mixed", PRE_ENCODED_KEYS)
    # Pre-encoded batches: the VQ model and text encoder are off the device; frozen layers are stored in fp16.
    assert memory.weights < transformer_bytes if mode == "lora" else memory.weights == transformer_bytes
    assert memory.gradients == 4 * trained
    if state_bytes_per_weight:  # two fp32 moments per weight, plus a 4-byte step count per tensor
        steps = sum(1 for p in module.parameters() if p.requires_grad)
        assert memory.optimizer == state_bytes_per_weight * trained + 4 * steps
    else:  # 8-bit moments for the large tensors: less than AdamW's 8 bytes per weight
        assert 2 * trained < memory.optimizer < 8 * trained
    assert memory.host_optimizer == 0


def test_offloaded_adamw_keeps_its_state_in_host_memory():
    module = build_module(Row("tiny", "tiny", 64, "full", 1, 1, None), offload_optimizer=True)
    memory = measure(module, "16-mixed", PIXEL_KEYS)
    trained = sum(p.numel() for p in module.parameters() if p.requires_grad)
    assert memory.optimizer == 0 and memory.host_optimizer >= 12 * trained  # fp32 weights and two moments
    assert memory.weights > 4 * trained  # with pixel batches the VQ encoder and text encoder stay on the device
