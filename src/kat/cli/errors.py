"""The tools' command lines: argparse with one-line errors, and console scripts that print any
error as one line (exit 2: the arguments; 1: the run) unless --debug or KAT_DEBUG=1."""
from __future__ import annotations

import argparse
import contextlib
import os
import sys


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (the usage block is what --help is for)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help="on an error, show the Python traceback instead of one line (or set KAT_DEBUG=1)")


@contextlib.contextmanager
def usage_phase():
    """Setting up from the arguments: anything failing in here (a missing path, an unknown model, a
    checkpoint that does not fit) is the arguments' fault, and the command exits 2 for it, not 1."""
    try:
        yield
    except Exception as e:
        e.kat_exit_code = 2
        raise


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    if "Original Traceback" in text:  # raised in a DataLoader worker: the original's last line
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last and "Error" in last.split(": ", 1)[0] else last
    text = " ".join(text.split())
    if len(text) > 600:
        text = text[:600] + " ..."
    return text or type(e).__name__


def run_cli(prog: str, main, argv=None) -> int:
    """A console script: ``main(argv)``, with every error as one line on stderr (exit 2: the
    arguments; 1: the run failed) unless ``--debug`` or ``KAT_DEBUG=1`` asks for the traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--debug" in argv or os.environ.get("KAT_DEBUG", "") not in ("", "0"):
        return main(argv)
    try:
        return main(argv)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        code = getattr(e, "kat_exit_code", 1)
        hint = "" if code == 2 else " (--debug shows the traceback)"
        print(f"{prog}: error: {_one_line(e)}{hint}", file=sys.stderr)
        return code
