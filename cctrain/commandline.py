"""What every cctrain command line shares (``cctrain``, ``cctrain-enclave``): the exit-status
contract, and errors as one line on stderr, never a traceback.

===  ====================================================================================
 0   success
 1   a check or an operation failed: evidence, a signature, a receipt, a release or the
     journal does not verify; the policy under ``cctrain policy check``/``verify`` is
     invalid or incompletely signed; the enclave serves another policy; the enclave refused
     the request (wrong phase, not permitted, start rule not met)
 2   bad input: a usage error; a file that is missing, unreadable or not what it should be
     (policy, signed policy, key, shard, release bundle, evidence); a policy that cannot be
     used (invalid, not fully signed, expired); a key that is not a party of the policy; a
     malformed enclave address; a shard the enclave refuses as invalid; for ``enclave
     serve``, any setup it cannot start with (no trainer installed, a training plan that
     cannot run, an unusable or locked state directory, a custom model source that does not
     match, a port it cannot listen on)
 3   the enclave cannot be reached, or the connection broke: nothing is known to have
     happened; run the command again (an upload resumes where it stopped)
130  interrupted (Ctrl-C)
===  ====================================================================================

A bug is the one thing that still shows a traceback: any exception outside this contract.

With ``--format json`` (every ``cctrain`` command takes it; text is the default) a command's
result is one JSON document on stdout, and an error is one JSON object on **stdout** too, in
place of the ``error: ...`` line (so that ``cmd --format json | jq`` sees either)::

    {"error": {"code": "policy-file", "message": "...", "exit": 2}}

``code`` is a stable slug: for cctrain's own errors the exception's kind (``PolicyFileError``
is ``policy-file``, ``EnclaveUnavailableError`` is ``enclave-unavailable``), for click's usage
errors ``usage``, ``no-such-command``, ``no-such-option``, ``missing-parameter``,
``bad-parameter``; ``os-error`` for
a file that cannot be read or written, ``interrupted``; otherwise what the command names
(``failed``, ``bad-input`` by default). A policy's problems are in ``"problems"``, one string
each. Exit statuses are those of the table above, in either format. The ``--allow-simulated``
banner stays on stderr in both formats.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from cctrain.errors import CctrainError, EnclaveUnavailableError, InputError, UploadRejectedError

#: click >= 8.2 raises this (a UsageError) for a group run without a command.
_NO_ARGS_IS_HELP: Any = getattr(click.exceptions, "NoArgsIsHelpError", ())

SUCCESS = 0
FAILED = 1
BAD_INPUT = 2
UNAVAILABLE = 3
INTERRUPTED = 130


def exit_status(exc: BaseException) -> int:
    """The exit status the contract above gives ``exc``."""
    if isinstance(exc, EnclaveUnavailableError):
        return UNAVAILABLE
    if isinstance(exc, InputError):
        return BAD_INPUT
    if isinstance(exc, UploadRejectedError) and exc.code == "INVALID_ARGUMENT":
        return BAD_INPUT  # the shard (or the file it was read from) is not what the policy takes
    if isinstance(exc, OSError):
        return BAD_INPUT  # a path named on the command line cannot be read or written
    return FAILED


#: The slug of an error a command names only by its exit status.
_DEFAULT_SLUG = {FAILED: "failed", BAD_INPUT: "bad-input", UNAVAILABLE: "unavailable"}
_DEFAULT_SLUG[INTERRUPTED] = "interrupted"

#: Whether errors are JSON: set by :meth:`CommandGroup.main` from the command line, before
#: click parses it (a usage error must be JSON too).
_json_errors = False

FORMATS = ("text", "json")


def format_option(f: Any) -> Any:
    """``--format text|json`` (default text), passed to the command as ``fmt``."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        default="text",
        show_default=True,
        help="Output format; json: one JSON document on stdout, errors included.",
    )(f)


def wants_json(args: Sequence[str]) -> bool:
    """Whether ``args`` ask for ``--format json`` (anywhere, as click would take it)."""
    args = list(args)
    for i, arg in enumerate(args):
        if arg == "--":
            return False
        if arg == "--format=json" or (arg == "--format" and args[i + 1 : i + 2] == ["json"]):
            return True
    return False


def slug(name: str) -> str:
    """``PolicyFileError`` -> ``policy-file``: the stable code of an error kind."""
    name = name.removesuffix("Error") or name
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", name).lower()


def error_document(
    message: str, code: int, kind: str | None = None, problems: Sequence[str] = ()
) -> dict[str, Any]:
    """The JSON mode's error object."""
    err: dict[str, Any] = {
        "code": kind or _DEFAULT_SLUG.get(code, "failed"),
        "message": message.split(":\n  - ", 1)[0] if problems else message,
        "exit": code,
    }
    if problems:
        err["problems"] = list(problems)
    return {"error": err}


def fail(
    message: str, code: int = FAILED, kind: str | None = None, problems: Sequence[str] = ()
) -> NoReturn:
    """End the command with ``error: message`` on stderr (in JSON mode: the error object on
    stdout) and exit status ``code``. ``kind``: the JSON ``code`` slug (default: by status)."""
    if _json_errors:
        click.echo(json.dumps(error_document(message, code, kind, problems)))
    else:
        click.echo(f"error: {message}", err=True)
    sys.exit(code)


def fail_with(exc: BaseException, code: int) -> NoReturn:
    """:func:`fail` for one of cctrain's errors: its kind, its problems."""
    problems = getattr(exc, "problems", ())
    fail(str(exc), code, slug(type(exc).__name__), problems)


def _os_error_text(exc: OSError) -> str:
    if exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return exc.strerror or str(exc)


class CommandGroup(click.Group):
    """A click group that follows the contract: click's usage errors, cctrain's errors and
    OS errors on the files a command names each become one ``error: ...`` line."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        global _json_errors
        _json_errors = wants_json(sys.argv[1:] if args is None else args)
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _NO_ARGS_IS_HELP as exc:  # a group run without a command: its help, as click does
            exc.show()
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            kind = "usage" if type(exc) is click.UsageError else slug(type(exc).__name__)
            fail(exc.format_message() + where, BAD_INPUT, kind)
        except click.ClickException as exc:
            fail(exc.format_message(), exc.exit_code)
        except click.Abort:
            fail("interrupted", INTERRUPTED)
        except CctrainError as exc:
            fail_with(exc, exit_status(exc))
        except OSError as exc:
            fail(_os_error_text(exc), exit_status(exc), "os-error")
        # --help and --version end in click's Exit, which main() returns as a status.
        sys.exit(result if isinstance(result, int) else SUCCESS)
