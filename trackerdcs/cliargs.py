"""What every console script's command line shares: `--version`, and the file it reads.

Every script takes its file (the lab YAML; `trackerdcs-ingest`'s telegraf.conf) the same way:
`--config FILE`, the documented form, or the bare `FILE` (`trackerdcs check-config lab.yml`,
`trackerdcs-power lab.yml`). Giving two different files is an error, as is giving none where
the script has no default.
"""

from __future__ import annotations

import argparse

from trackerdcs import __version__

CONFIG_FILE = "config_file"  # the dest of the positional FILE (`args.config` after `resolve`)


def add_version(parser: argparse.ArgumentParser) -> None:
    """`--version`: prints `<prog> <trackerdcs version>` and exits 0."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")


def add_config(
    parser: argparse.ArgumentParser,
    *,
    what: str = "lab YAML file",
    default: str | None = None,
    positional: bool = True,
) -> None:
    """`--config FILE` and (with `positional`) a bare `FILE`; `resolve_config` merges them into
    `args.config` (`default` when neither is given; None with no default: an error)."""
    tail = f" (default: {default})" if default else ""
    parser.add_argument("--config", metavar="FILE", help=f"the {what}{tail}")
    if positional:
        parser.add_argument(
            CONFIG_FILE, nargs="?", metavar="FILE", help="the same as --config FILE"
        )
    parser.set_defaults(_config_default=default, _config_required=default is None)


def resolve_config(
    parser: argparse.ArgumentParser, args: argparse.Namespace, given: str | None = None
) -> argparse.Namespace:
    """Set `args.config` from `--config` or the bare FILE (`given`: one the caller picked out of
    its own positionals); `parser.error` (exit 2) for two different files or a missing one."""
    positional = given if given is not None else getattr(args, CONFIG_FILE, None)
    if positional is not None and args.config is not None and positional != args.config:
        parser.error(f"two files given: --config {args.config} and {positional} (give one)")
    args.config = args.config or positional or getattr(args, "_config_default", None)
    if args.config is None and getattr(args, "_config_required", False):
        parser.error("the file is required: --config FILE (or FILE)")
    return args


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """`parser.parse_args(argv)`, then `resolve_config`."""
    return resolve_config(parser, parser.parse_args(argv))
