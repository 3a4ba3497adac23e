"""``vtc``: the command line over the packages' Python APIs (parsing and printing only)."""

from __future__ import annotations

import argparse
import json
import sys

import importlib


class CLIError(Exception):
    """A user error the CLI reports as one line, exit status 2."""


#: subcommand -> module of this package with HELP, add_arguments(parser) and run(args)
COMMANDS = {
    "predict": "predict_cmd",
    "reducers": "reducers_cmd",
    "profile": "profile_cmd",
    "validate": "validate_cmd",
    "eval": "eval_cmd",
    "report": "report_cmd",
    "saliency": "saliency_cmd",
    "demo": "demo_cmd",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vtc", description="Visual-token compression: predict, measure and report what it buys.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"{__package__}.{module_name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args._run(args) or 0
    except (ValueError, FileNotFoundError, CLIError) as e:
        # Spec, prediction and reducer errors are ValueErrors that already name the bad value.
        print(f"vtc {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into head & co.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"vtc {args.command}: interrupted", file=sys.stderr)
        return 130


def dumps(obj) -> str:
    return json.dumps(obj, allow_nan=False)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
