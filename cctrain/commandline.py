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
"""

from __future__ import annotations

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


def fail(message: str, code: int = FAILED) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


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
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _NO_ARGS_IS_HELP as exc:  # a group run without a command: its help, as click does
            exc.show()
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            fail(exc.format_message() + where, BAD_INPUT)
        except click.ClickException as exc:
            fail(exc.format_message(), exc.exit_code)
        except click.Abort:
            fail("interrupted", INTERRUPTED)
        except CctrainError as exc:
            fail(str(exc), exit_status(exc))
        except OSError as exc:
            fail(_os_error_text(exc), exit_status(exc))
        # --help and --version end in click's Exit, which main() returns as a status.
        sys.exit(result if isinstance(result, int) else SUCCESS)
