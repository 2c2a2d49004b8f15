"""Every command the README and the docs show runs as written: each `python -m amused_lightning ...` line of their
shell blocks is parsed as the command parses it (`fit` and `validate` print their whole configuration), the scripts
they run take the options they are given, and their Python examples run. The quickstart and test commands themselves
run in `scripts/first_hour.py`."""

from __future__ import annotations

import re
import shlex

import pytest

from amused_lightning.__main__ import main
from amused_lightning.commands import check_data, export, generate
from amused_lightning.commands.fit import cli_main

from helpers import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
COMMAND = "python -m amused_lightning"


def blocks(language: str) -> list[tuple[str, str]]:
    """(page, block) for every fenced block of `language` (sh: also bash) in the README and the docs."""
    names = "sh|bash" if language == "sh" else language
    return [(page.name, block) for page in PAGES
            for block in re.findall(rf"```(?:{names})\n(.*?)```", page.read_text(), flags=re.S)]


def shell_commands() -> list[tuple[str, str]]:
    """(page, command) for each `&&`-separated command of the shell blocks, comments left out."""
    lines = [(page, line.strip()) for page, block in blocks("sh") for line in block.splitlines()]
    return [(page, part.strip()) for page, line in lines if line and not line.startswith("#")
            for part in line.split("&&")]


def parse(argv: list[str]) -> None:
    """Parse `python -m amused_lightning ARGV` as the command does, without running it."""
    name, rest = argv[0], argv[1:]
    if name == "--help":
        main(["--help"])
    elif "--help" in rest:
        with pytest.raises(SystemExit) as done:
            main([name, "--help"])
        assert done.value.code in (0, None)
    elif name in ("fit", "validate"):
        with pytest.raises(SystemExit) as done:
            cli_main([name, *rest, "--print_config"])
        assert done.value.code in (0, None)
    elif name == "check-data":
        check_data.fit_settings(check_data.parse(rest)[1])
    else:
        {"export": export.parse, "generate": generate.parse}[name](rest)


AMUSED = [(page, command[command.index(COMMAND):]) for page, command in shell_commands() if COMMAND in command]


@pytest.mark.parametrize("page, command", AMUSED, ids=[f"{page}: {command[len(COMMAND) + 1:][:60]}"
                                                        for page, command in AMUSED])
def test_each_command_parses(page, command, monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # configs/ and scripts/ as a clone has them
    parse(shlex.split(command)[len(COMMAND.split()):])


def test_each_script_takes_its_options():
    scripts = [shlex.split(command) for _, command in shell_commands() if command.startswith("python scripts/")]
    assert scripts, "the README runs scripts/make_toy_dataset.py"
    for words in scripts:
        source = (REPO / words[1]).read_text()
        assert all(f'"{word}"' in source for word in words[2:] if word.startswith("--")), words


def test_the_python_examples_run(tmp_path, monkeypatch):
    from make_toy_dataset import build

    monkeypatch.chdir(tmp_path)
    build(tmp_path / "data" / "toy-teal-crown", num_images=16, size=64, seed=0, world="finetune")
    examples = [block for _, block in blocks("python") if "amused_lightning" in block]
    assert len(examples) >= 2, "the README's model and the training page's fit"
    for example in examples:
        exec(compile(example, "<docs>", "exec"), {})
    assert (tmp_path / "character.png").is_file() and (tmp_path / "runs" / "python" / "export" / "README.md").is_file()
