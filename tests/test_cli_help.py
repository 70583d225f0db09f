"""The command line explains itself: every option described with its default, one meaning per name."""

import re

import typer.main

from vebi.cli import app, main


def _commands():
    group = typer.main.get_command(app)
    return group, group.commands


def _options(command):
    return [p for p in command.params if p.param_type_name == "option" and p.name != "help"]


def test_every_option_has_a_description_and_states_its_default():
    _, commands = _commands()
    missing = []
    for name, command in commands.items():
        for option in _options(command):
            text = option.help or ""
            flag = getattr(option, "is_flag", False) or option.count
            shows_default = option.show_default and option.default is not None or "default" in text
            if not text.strip():
                missing.append(f"{name} {option.opts[0]}: no description")
            elif not (flag or option.required or shows_default):
                missing.append(f"{name} {option.opts[0]}: no default stated")
    assert not missing, "\n".join(missing)


def _meaning(text: str | None) -> str:
    """What an option is, before the command's own detail: the help text up to its first ';' or '('."""
    return re.split(r"[;(]", text or "")[0].strip()


def test_no_option_name_has_two_meanings():
    _, commands = _commands()
    meanings: dict[str, dict[str, list[str]]] = {}
    for name, command in commands.items():
        for option in _options(command):
            for opt in option.opts + option.secondary_opts:
                meanings.setdefault(opt, {}).setdefault(_meaning(option.help), []).append(name)
    clashes = {opt: texts for opt, texts in meanings.items() if len(texts) > 1}
    assert not clashes, "\n".join(f"{opt}: {texts}" for opt, texts in clashes.items())


def test_commands_are_listed_in_pipeline_order_with_a_one_line_summary(capsys):
    assert main(["--help"]) == 0
    lines = [line for line in capsys.readouterr().out.split("Commands:")[1].splitlines() if line.strip()]
    assert [line.split()[0] for line in lines] == ["layers", "collect", "fit", "interpret", "explain", "evaluate",
                                                   "report", "an8flower", "train", "demo"]
    assert all(len(line.split()) > 2 and not line.endswith("...") for line in lines), lines


def test_flags_show_no_value(capsys):
    assert main(["demo", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--quick  " in out and "<bool>" not in out
