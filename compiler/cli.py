"""The `invc` command line. Each feature module adds its subcommands through `register(subparsers)`.

Exit status: 0 success; 1 a check ran and failed (numbers out of tolerance);
2 bad input (spec error, bad arguments, missing or unreadable file, refused model).
"""
from __future__ import annotations

import argparse
import importlib
import os
import select
import signal
import sys
import threading

from common.errors import InvcError
from compiler.commands import parse_limits
from dsl import limits
from dsl.errors import SpecError

# Modules that add subcommands; each exposes register(subparsers). Imported lazily at
# registration so `invc check` never pays for torch.
COMMAND_MODULES = [
    "compiler.commands",
    "compiler.cli_slice",
    "compiler.cli_symmetry",
]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="invc",
        description="invc: a model-graph compiler that understands symmetry.",
        epilog="Exit status: 0 ok, 1 a numeric check failed, 2 bad input. "
               "Run `invc COMMAND --help` for each command.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return p


def _terminated(signum, frame):
    # An exception, unlike the default action, unwinds through the clean-up of temporary files.
    raise SystemExit(128 + signum)


def _reader_gone() -> bool:
    """Whether standard output is a pipe whose reader has closed it (poll reports an error on it)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll here, or stdout is no file (captured, closed)
        return False


class OutputLost(InvcError):
    """A write to standard output failed (a full disk, /dev/full): the command's report is lost."""


class _CheckedOutput:
    """Standard output during a command: a failed write raises OutputLost, which main reports in one
    line. A broken pipe stays a BrokenPipeError, which main tells apart (a reader gone, or not)."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        return self._checked(self._stream.write, text)

    def flush(self) -> None:
        self._checked(self._stream.flush)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)

    @staticmethod
    def _checked(call, *args):
        try:
            return call(*args)
        except BrokenPipeError:
            raise
        except OSError as e:
            raise OutputLost(f"cannot write standard output: {e.strerror or e}") from None


def _discard_output() -> None:
    """Standard output goes to /dev/null, so that the interpreter's flush at exit does not raise again."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if sys.stdout is None:  # started with standard output closed: its descriptor may become a file's
        print("invc: standard output is closed; redirect it instead, e.g. > /dev/null", file=sys.stderr)
        return 2
    main_thread = threading.current_thread() is threading.main_thread()  # where signal handlers live
    before = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
    stdout, sys.stdout = sys.stdout, _CheckedOutput(sys.stdout)
    try:
        with limits.using(**parse_limits(getattr(args, "limit", []))):
            code = int(args.run(args) or 0)
            sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's flush at exit
            return code
    except KeyboardInterrupt:
        print("invc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        if not _reader_gone():
            raise  # another pipe broke: that is an error, not a reader that stopped early
        # The reader went away (`invc graph x.inv | head`): stop quietly, as cat and grep do.
        _discard_output()
        return 128 + signal.SIGPIPE
    except OutputLost as e:
        _discard_output()
        print(f"invc: {e}", file=sys.stderr)
        return e.exit_code
    except Exception as e:  # noqa: BLE001 - only errors that know their exit status are shown plainly
        code = getattr(e, "exit_code", None)
        if code is None:
            raise
        # A spec error starts with file:line:column, as compilers print them, so editors can jump there.
        print(e if isinstance(e, SpecError) else f"invc: {e}", file=sys.stderr)
        return code
    finally:
        sys.stdout = stdout
        if main_thread:
            signal.signal(signal.SIGTERM, before)


if __name__ == "__main__":
    sys.exit(main())
