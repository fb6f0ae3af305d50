"""A local command as the transport: its stdin/stdout carry the protocol, its stderr is ours."""

from __future__ import annotations

import subprocess
from typing import Any

from dsync_core.errors import DsyncError
from dsync_core.protocol import FdChannel
from dsync_core.remote import RemoteReplica

#: How long to wait for the command to exit after the conversation (then it is killed).
EXIT_WAIT = 30.0


class ProcessChannel(FdChannel):
    def __init__(self, proc: subprocess.Popen[bytes], timeout: float | None) -> None:
        assert proc.stdout is not None and proc.stdin is not None
        super().__init__(proc.stdout.fileno(), proc.stdin.fileno(), timeout)
        self.proc = proc

    def close(self) -> None:
        proc = self.proc
        for f in (proc.stdin, proc.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
        try:
            proc.wait(EXIT_WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def open_command(argv: list[str], user: str, timeout: float, rawlog: str | None, *, prefix: bytes,
                 what: str) -> Any:
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    except OSError as e:
        raise DsyncError(f"Cannot run {what} {argv[0]!r}: {e.strerror}", exit_code=1) from None
    channel = ProcessChannel(proc, timeout)
    try:
        if prefix:
            channel.write(prefix)
        return RemoteReplica(channel, user=user, io_timeout=timeout, rawlog=rawlog,
                             peer=f"the remote command {' '.join(argv)[:200]}")
    except DsyncError as e:
        channel.close()
        code = proc.returncode
        if code not in (None, 0):
            raise DsyncError(f"{e.message} (the command exited with status {code})", exit_code=1) from None
        raise
    except OSError as e:
        channel.close()
        raise DsyncError(f"Cannot talk to {what} {argv[0]!r}: {e}", exit_code=1) from None
