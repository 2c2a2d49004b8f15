"""The benchmark script stays runnable and covers every row of the seed tables (no timing is asserted here)."""

from benchmark import cpu_table, seed_rows


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
