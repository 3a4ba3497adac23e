"""``vtc``: the command line over the packages' Python APIs (parsing and printing only)."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path


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


#: commands whose output rows resume: a rerun skips what is already written
RESUMABLE = ("profile", "eval")


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


#: commands whose --out is a folder (the others write a file)
FOLDER_OUT = ("report", "saliency", "demo")


def comma_list(text: str, flag: str, cast=int, empty: str | None = None) -> list:
    """A comma-separated option (``--keep 64,128``) as a list of ``cast``; a bad item is an error
    naming the flag and the text; an empty list is one too when ``empty`` says what to give."""
    what = "integers" if cast is int else "numbers"
    try:
        out = [cast(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{flag} {text!r} is not a comma-separated list of {what}") from None
    if not out and empty:
        raise ValueError(f"{flag} {text!r} {empty}")
    return out


def check_writable(path: str, flag: str, folder: bool = False) -> None:
    """Refuse, before any work, an output path that cannot be written (one line naming it): a
    probe file is created and removed in the nearest folder that exists on the way to it."""
    import tempfile

    p = Path(path)
    if not folder and p.is_dir():
        raise CLIError(f"{flag} {path!r} is a folder; give a file name")
    if folder and p.exists() and not p.is_dir():
        raise CLIError(f"{flag} {path!r} is a file; give a folder")
    probe = p if folder and p.exists() else p.parent
    while not probe.exists():
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(f"{probe} is not a folder")
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".vtc-write-check-"):
            pass
        if p.exists() and not folder:
            with open(p, "a"):
                pass
    except OSError as e:
        raise CLIError(f"{flag} {path!r} cannot be written ({e.strerror or e}); give a writable path") from None


def check_outputs(args) -> None:
    for attr, flag in (("out", "--out"), ("plot", "--plot"), ("calibration_out", "--calibration-out")):
        value = getattr(args, attr, None)
        if value:
            check_writable(value, flag, folder=attr == "out" and args.command in FOLDER_OUT)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_outputs(args)
        return args._run(args) or 0
    except (ValueError, FileNotFoundError, CLIError) as e:
        # Spec, prediction and reducer errors are ValueErrors that already name the bad value.
        print(f"vtc {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into head & co.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        where = getattr(args, "out", None)
        saved = f"every finished condition is saved in {where}; " if where and args.command in RESUMABLE else ""
        again = "run the same command again to resume (finished work is skipped)" if args.command in RESUMABLE else ""
        print(f"vtc {args.command}: interrupted; {saved}{again}".rstrip("; "), file=sys.stderr)
        return 130


def dumps(obj) -> str:
    return json.dumps(obj, allow_nan=False)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
