"""The reference comparison builds the same work for both sides and reads step times back (no timing asserted)."""

import sys
from pathlib import Path

from reference_speed import CASES, Case, launcher, our_command, reference_command, run_side, spread, step_seconds

STUB = """import sys, torch
steps = int(sys.argv[sys.argv.index('--max_train_steps') + 1])
weight = torch.nn.Parameter(torch.ones(2))
optimizer = torch.optim.SGD([weight], lr=0.1)
for _ in range(steps):
    weight.sum().backward()
    optimizer.step()
"""


def test_both_sides_get_the_same_work():
    case = CASES["512-lora-3ep"]
    ours = our_command(case, Path("p"), Path("i"), Path("o"))
    reference = reference_command(Path("train_amused.py"), case, Path("p"), Path("i"), Path("o"))

    def value(command, flag):
        return command[command.index(flag) + 1]

    for our_flag, reference_flag in [("--model.pretrained", "--pretrained_model_name_or_path"),
                                     ("--data.source.path", "--instance_data_dir"),
                                     ("--data.resolution", "--resolution"), ("--data.batch_size", "--train_batch_size"),
                                     ("--trainer.max_steps", "--max_train_steps"),
                                     ("--model.optimizer.init_args.lr", "--learning_rate"),
                                     ("--model.lora.r", "--lora_r"), ("--model.lora.alpha", "--lora_alpha")]:
        assert value(ours, our_flag) == value(reference, reference_flag), our_flag
    assert case.epochs == 3 and value(reference, "--mixed_precision") == "no"
    # Flags that crash the reference are never passed.
    assert not {"--gradient_checkpointing", "--cond_dropout_prob", "--split_vae_encode"} & set(reference)
    assert value(reference, "--report_to") not in ("wandb", "tensorboard")


def test_a_run_is_timed_whole_and_its_optimizer_steps_are_clocked(tmp_path):
    script = tmp_path / "stub.py"
    script.write_text(STUB)
    run = run_side(lambda out: [*launcher(str(script)), "--max_train_steps", "4"], tmp_path, {}, "stub")
    assert run.seconds > 0 and run.peak_rss_gb > 0
    assert run.step_seconds is not None and run.step_seconds >= 0
    times = (tmp_path / "stub.log").read_text().split(":")[-1].split()
    assert len(times) == 4 and launcher("x.py")[0] == sys.executable
    assert step_seconds(tmp_path / "stub.log", skip=3) is None  # one step left after the warm-up: no interval


def test_spread_and_cases():
    assert spread([1.0, 3.0, 2.0]) == "2.00 (1.00-3.00)"
    assert all(isinstance(case, Case) and case.resolution in (64, 256, 512) for case in CASES.values())
