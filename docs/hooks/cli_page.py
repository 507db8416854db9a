"""The CLI reference, generated from the argparse parser of `driftloop.cli`."""

from __future__ import annotations

import argparse
import inspect

from md_table import cell, code, generated_note, prose, table

USAGE_WIDTH = 76  # fits the content column; fixed, so the page does not change with the terminal that builds it


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every subcommand's parser, by name, in the order `driftloop --help` lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def usage(parser: argparse.ArgumentParser) -> str:
    """The usage line argparse prints, wrapped at USAGE_WIDTH."""
    formatter = argparse.HelpFormatter(parser.prog, width=USAGE_WIDTH)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def argument_name(action: argparse.Action) -> str:
    """`--data DATA`, `--json`, or a positional's name with its choices."""
    if not action.option_strings:
        return action.metavar or action.dest
    if action.nargs == 0:
        return ", ".join(action.option_strings)
    metavar = action.metavar or action.dest.upper()
    return ", ".join(f"{option} {metavar}" for option in action.option_strings)


def default_of(action: argparse.Action) -> str:
    """The argument's default as the command sees it; "—" for none (the config's value applies, if any)."""
    if action.nargs == 0 or action.default in (None, argparse.SUPPRESS):
        return "—"
    return code(action.default)


def exclusive_note(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """" (not with --x)" when `action` is in a mutually exclusive group."""
    for group in parser._mutually_exclusive_groups:
        if action in group._group_actions:
            others = [other.option_strings[0] for other in group._group_actions if other is not action]
            return f" (not with {', '.join(others)})"
    return ""


def arguments_table(parser: argparse.ArgumentParser) -> str:
    """One row per argument: name, required, default, choices, help."""
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        required = "yes" if action.required or not action.option_strings else ""
        choices = ", ".join(code(choice) for choice in action.choices) if action.choices else ""
        help_text = prose(cell(action.help or "")) + exclusive_note(parser, action)
        rows.append([code(argument_name(action)), required, default_of(action), choices, help_text])
    return table(["argument", "required", "default", "choices", "meaning"], rows)


def handler_doc(parser: argparse.ArgumentParser) -> str:
    """The command's handler docstring (what it does and its exit codes), or nothing."""
    handler = parser.get_default("handler")
    return inspect.cleandoc(handler.__doc__) if handler is not None and handler.__doc__ else ""


def command_section(name: str, parser: argparse.ArgumentParser) -> str:
    """One command: its help, usage, behaviour and exit codes, and its arguments."""
    parts = [f"## {code('driftloop ' + name)} {{#{name}}}", prose(parser.description or ""),
             f"```text\n{usage(parser)}\n```"]
    doc = handler_doc(parser)
    if doc:
        parts.append(f"**Result and exit codes**: {prose(' '.join(doc.split()))}")
    parts.append(arguments_table(parser))
    return "\n\n".join(parts)


def config_optional(commands: dict[str, argparse.ArgumentParser]) -> list[str]:
    """The commands whose --config may be left out."""
    return [name for name, sub in commands.items()
            if any("--config" in action.option_strings and not action.required for action in sub._actions)]


def cli_page(parser: argparse.ArgumentParser) -> str:
    """The CLI reference page: an index of the commands, then each command's section."""
    commands = subcommands(parser)
    index = table(["command", "what it does"],
                  [[f"[{code(name)}](#{name})", prose(cell(sub.description or ""))] for name, sub in commands.items()])
    parts = [
        "# CLI",
        generated_note("the argparse parser in `core/cli.py` (`driftloop --help`)"),
        "Every command takes `--config FILE`, the one YAML file of the [configuration](configuration.md) (for "
        f"{', '.join(code(name) for name in config_optional(commands))} it defaults to the shipped demo config). "
        "A flag that overrides a config key says which. Errors from bad input are one line on stderr that names "
        "the file, column or key at fault, with exit code 2; `--json` prints one JSON object on stdout and nothing "
        "else there.",
        index,
    ]
    parts += [command_section(name, sub) for name, sub in commands.items()]
    return "\n\n".join(parts) + "\n"
