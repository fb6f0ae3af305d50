"""Benchmark remote sync: turnarounds and wall time over tcp, with and without 50 ms latency.

Issue 4 asks for the round trips of a remote sync: a proxy adding 50 ms each way, the
request/response turnarounds of an initial sync (10 mailboxes, 5k messages) and of a
no-change stateful sync (at most mailboxes + 5), local-vs-tcp throughput on loopback, and
Dovecot's `doveadm sync` over its own tcp listener on the same corpus for comparison.

Everything runs on 127.0.0.1:

- `dsync server --listen 127.0.0.1:0` with a passwd-file userdb in the work directory
  (one user per destination, so every initial sync goes into an empty Maildir);
- a private Dovecot (`dovecot -c CONF`, its own base_dir) whose doveadm service listens on
  127.0.0.1 with `doveadm_password`;
- a delay proxy in this process in front of each server: every chunk read is delivered
  --delay-ms later, in order (latency, not a bandwidth limit);

and times, each --runs times (median reported), for each tool:

- initial `sync` Maildir -> empty Maildir locally (no network: the throughput baseline);
- initial `sync` to the server over tcp, directly and through the proxy;
- the same sync again with nothing changed (default fast algorithm), directly and through
  the proxy;
- a no-change stateful sync (`-s STATE`, the state from an untimed `-s ''` run) through the proxy.

dsync's turnarounds come from its rawlog (`-r`): the number of times the client, having
sent, waits for the server (keepalives ignored), which is what `RemoteReplica.turnarounds`
counts (checked once in process). Dovecot's dsync protocol streams both ways at once, so
for it only the proxy's count of direction changes and the latency cost
(t_proxy - t_direct) / RTT are shown. After every initial sync the destination must hold
every message of the corpus (per mailbox).

Run as root (doveadm drops to an unprivileged user; Dovecot never touches mail as root):

    python benchmarks/bench_remote.py --messages 5000 --folders 10 --max-size 1 --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_status import (  # noqa: E402  (needs the path above)
    DOVECOT_CONF,
    BenchError,
    RunAs,
    chown_tree,
    ensure_user,
    find_dsync,
    flush,
    interpreter_probe,
    machine_description,
    make_corpus,
    render,
    run_measured,
)

PASSWORD = "bench-remote-pw"
TOOLS = ("dsync", "doveadm")

# -- the delay proxy -------------------------------------------------------------------------


class DelayProxy:
    """A TCP proxy on 127.0.0.1 adding ``delay`` seconds to each direction.

    Each chunk read is stamped and written ``delay`` later by a writer thread, in order, so
    many chunks can be in flight at once: latency, not a bandwidth cap. The TCP connect
    itself is not delayed. ``changes`` counts direction changes: a client chunk that
    arrives after the server has sent something since the previous client chunk.
    """

    def __init__(self, upstream_port: int, delay: float) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.delay = delay
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._lock = threading.Lock()
        self.connections = 0
        self.changes = 0
        self.bytes = 0
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def take(self) -> tuple[int, int, int]:
        """(connections, direction changes, bytes) since the last call."""
        with self._lock:
            out = (self.connections, self.changes, self.bytes)
            self.connections = self.changes = self.bytes = 0
        return out

    def close(self) -> None:
        self._stop = True
        self.sock.close()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self.connections += 1
            state = {"last": "s2c"}
            for src, dst, name in ((client, server, "c2s"), (server, client, "s2c")):
                q: queue.Queue[tuple[float, bytes] | None] = queue.Queue()
                threading.Thread(target=self._read, args=(src, q, name, state), daemon=True).start()
                threading.Thread(target=self._write, args=(dst, q), daemon=True).start()

    def _read(self, src: socket.socket, q: queue.Queue[tuple[float, bytes] | None], name: str,
              state: dict[str, str]) -> None:
        try:
            while True:
                data = src.recv(1 << 18)
                if not data:
                    break
                stamp = time.monotonic()
                with self._lock:
                    self.bytes += len(data)
                    if name == "c2s" and state["last"] == "s2c":
                        self.changes += 1
                    state["last"] = name
                q.put((stamp + self.delay, data))
        except OSError:
            pass
        q.put(None)

    @staticmethod
    def _write(dst: socket.socket, q: queue.Queue[tuple[float, bytes] | None]) -> None:
        try:
            while True:
                item = q.get()
                if item is None:
                    break
                due, data = item
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            try:
                dst.close()
            except OSError:
                pass


# -- servers ---------------------------------------------------------------------------------


class DsyncServer:
    """`dsync server --listen 127.0.0.1:0`, stderr to a log file; stopped by its pid."""

    def __init__(self, dsync: str, conf: Path, users: Path, run_as: RunAs, log: Path) -> None:
        self.log = log
        argv = [*run_as.prefix(), dsync, "-c", str(conf), "-o", f"userdb=passwd-file:{users}",
                "-o", "mail_location=maildir:%h/Maildir", "-o", f"doveadm_password={PASSWORD}",
                "server", "--listen", "127.0.0.1:0"]
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                         env=run_as.env())
        end = time.monotonic() + 30
        while time.monotonic() < end:
            text = log.read_text(errors="replace")
            if "listening on" in text:
                self.port = int(text.split("listening on ", 1)[1].split()[0].rsplit(":", 1)[1])
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise BenchError(f"dsync server --listen did not start: {log.read_text(errors='replace')[-1000:]}")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # by its pid
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.log.read_text(errors="replace")


DOVECOT_SERVER_CONF = """\
base_dir = {base}/run
state_dir = {base}/state
instance_name = dsync-bench-remote-{tag}
log_path = {base}/dovecot.log
listen = 127.0.0.1
protocols = none
ssl = no
disable_plaintext_auth = no
first_valid_uid = 1
mail_uid = {uid}
mail_gid = {gid}
mail_location = maildir:~/Maildir
default_internal_user = dovecot
default_login_user = dovenull
doveadm_password = {password}
passdb {{
  driver = passwd-file
  args = {users}
}}
userdb {{
  driver = passwd-file
  args = {users}
  default_fields = uid={uid} gid={gid}
}}
namespace inbox {{
  inbox = yes
  separator = /
}}
service doveadm {{
  inet_listener {{
    address = 127.0.0.1
    port = {port}
  }}
}}
service anvil {{
  chroot =
}}
service stats {{
  inet_listener http {{
    port = 0
  }}
}}
"""


class DovecotServer:
    """A private Dovecot whose doveadm service listens on 127.0.0.1; stopped by master.pid."""

    def __init__(self, users: Path, user: str) -> None:
        dovecot = shutil.which("dovecot") or "/usr/sbin/dovecot"
        # A short base path: unix sockets live in base_dir (107-byte limit).
        self.base = Path(tempfile.mkdtemp(prefix="dbr-", dir="/tmp"))
        self.base.chmod(0o755)
        for d in ("run", "state"):
            (self.base / d).mkdir()
        self.port = free_port()
        pw = _pw(user)
        self.conf = self.base / "dovecot.conf"
        self.conf.write_text(DOVECOT_SERVER_CONF.format(
            base=self.base, tag=uuid.uuid4().hex[:8], uid=pw[0], gid=pw[1], users=users, port=self.port,
            password=PASSWORD))
        self.conf.chmod(0o644)
        with open(self.base / "start.log", "wb") as out:  # it daemonises: no pipes
            subprocess.run([dovecot, "-c", str(self.conf)], stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                           check=True, timeout=30)
        self.pid = 0
        end = time.monotonic() + 15
        while time.monotonic() < end and not self.pid:
            try:
                self.pid = int((self.base / "run" / "master.pid").read_text().strip())
            except (OSError, ValueError):
                time.sleep(0.05)
        if not self.pid:
            raise BenchError(f"dovecot did not start: {self.log()[-1000:]}")
        wait_port(self.port)

    def log(self) -> str:
        try:
            return (self.base / "dovecot.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> str:
        text = self.log()
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            end = time.monotonic() + 15
            while time.monotonic() < end:
                try:
                    os.kill(self.pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
        shutil.rmtree(self.base, ignore_errors=True)
        return text


def _pw(user: str | None) -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam(user) if user else pwd.getpwuid(os.getuid())
    return entry.pw_uid, entry.pw_gid


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise BenchError(f"nothing listens on 127.0.0.1:{port}")


# -- measuring -------------------------------------------------------------------------------


def rawlog_turnarounds(path: Path) -> int:
    """How often the client, having sent, waited for the server (keepalives ignored)."""
    n, last = 0, "<"
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.split(" ", 3)
            if len(parts) < 3 or parts[1] not in "<>" or parts[2] == "K":
                continue
            if parts[1] == "<" and last == ">":
                n += 1
            last = parts[1]
    return n


def corpus_counts(maildir: Path) -> dict[str, int]:
    """Mailbox name -> message count of a Maildir++ corpus (from its files)."""
    from dsync_core.mutf7 import decode

    out = {}
    for d in [maildir, *sorted(p for p in maildir.iterdir() if p.name.startswith(".") and p.is_dir())]:
        name = "INBOX" if d == maildir else decode(d.name[1:]).replace(".", "/")
        out[name] = sum(1 for sub in ("cur", "new") for _ in (d / sub).iterdir())
    return out


@attrs.define
class Case:
    key: str
    label: str
    initial: bool
    seconds: list[float] = attrs.Factory(list)
    turnarounds: list[int] = attrs.Factory(list)
    changes: list[int] = attrs.Factory(list)  # proxy-seen direction changes
    command: str = ""


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.notes: list[str] = []
        self.cases: dict[str, Case] = {}
        self.workdir = args.workdir.resolve()
        self.bytes = 0
        self.expected: dict[str, int] = {}
        self.states: dict[int, str] = {}  # pair -> the state its last stateful run printed
        self.ports: dict[int, str] = {}  # port -> its name in the printed commands
        self.paths: dict[str, str] = {}

    def case(self, key: str, label: str, initial: bool) -> Case:
        if key not in self.cases:
            self.cases[key] = Case(key, label, initial)
        return self.cases[key]

    def record(self, case: Case, seconds: float, turnarounds: int | None, proxy: DelayProxy | None,
               command: list[str]) -> None:
        case.seconds.append(seconds)
        if turnarounds is not None:
            case.turnarounds.append(turnarounds)
        if proxy is not None:
            case.changes.append(proxy.take()[1])
        shown = [Path(command[0]).name if i == 0 else a for i, a in enumerate(command)]
        for port, name in self.ports.items():
            shown = [a.replace(f"127.0.0.1:{port}", f"127.0.0.1:{name}") for a in shown]
        case.command = shlex.join(shown).replace(str(self.workdir), "WORKDIR")
        for path, name in self.paths.items():
            case.command = case.command.replace(path, name)
        extra = f", {turnarounds} turnarounds" if turnarounds is not None else ""
        extra += f", proxy saw {case.changes[-1]} direction changes" if proxy is not None else ""
        print(f"  {case.label}: {seconds:.2f} s{extra}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time dsync and doveadm sync over tcp with added latency.")
    parser.add_argument("--messages", type=int, default=5000, help="corpus size (default 5000)")
    parser.add_argument("--folders", type=int, default=10, help="mailboxes including INBOX (default 10)")
    parser.add_argument("--seed", type=int, default=1, help="corpus seed (default 1)")
    parser.add_argument("--max-size", type=float, default=1.0, metavar="MIB", help="message size cap (default 1)")
    parser.add_argument("--runs", type=int, default=3, help="runs per case, median reported (default 3)")
    parser.add_argument("--delay-ms", type=float, default=50.0, help="proxy delay each way (default 50)")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/dsync-bench-remote"),
                        help="where corpora and copies live; must be traversable by --user")
    parser.add_argument("--keep", action="store_true", help="keep the corpus (reused next time) and the copies")
    parser.add_argument("--user", default="dsyncbench", help="unprivileged user for Dovecot when root")
    parser.add_argument("--dsync", help="dsync console script (default: next to this Python, else on PATH)")
    parser.add_argument("--tools", default="dsync,doveadm", help="comma-separated tools (default dsync,doveadm)")
    args = parser.parse_args(argv)
    args.tools = [t for t in args.tools.split(",") if t]
    if not args.tools or set(args.tools) - set(TOOLS):
        parser.error("--tools takes dsync, doveadm or both")
    if args.runs < 1 or args.messages < 1:
        parser.error("--runs and --messages must be >= 1")
    if "doveadm" in args.tools and os.geteuid() != 0:
        parser.error("the doveadm part needs root (doveadm -u against a running Dovecot); use --tools dsync")
    bench = Bench(args)
    try:
        return run(bench, argv if argv is not None else sys.argv[1:])
    except (BenchError, subprocess.CalledProcessError) as exc:
        print(f"bench_remote: {exc}", file=sys.stderr)
        return 1


def copy(src: Path, dst: Path, owner: str | None) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    # cp -al: neither tool rewrites a message file in place, and renames stay in the copy.
    subprocess.run(["cp", "-al", str(src), str(dst)], check=True)
    if owner:
        chown_tree(dst, owner)


def empty_dir(path: Path, owner: str | None) -> None:
    """An empty destination the tool's user may write into (the runs directory is root's)."""
    path.mkdir()
    if owner:
        chown_tree(path, owner)


def dsync_status(dsync: str, conf: Path, location: Path, run_as: RunAs) -> dict[str, int]:
    argv = [*run_as.prefix(), dsync, "-c", str(conf), "-o", f"mail_location=maildir:{location}", "-f", "json",
            "mailbox", "status", "messages", "*"]
    p = subprocess.run(argv, capture_output=True, text=True, env=run_as.env(), cwd="/")
    if p.returncode != 0:
        raise BenchError(f"dsync mailbox status on {location} failed: {p.stderr.strip()[-500:]}")
    return {row["mailbox"]: int(row["messages"]) for row in json.loads(p.stdout)}


def doveadm_status(conf: Path, location: Path, run_as: RunAs) -> dict[str, int]:
    argv = [*run_as.prefix(), "doveadm", "-c", str(conf), "-o", f"mail_location=maildir:{location}", "-f", "json",
            "mailbox", "status", "messages", "*"]
    p = subprocess.run(argv, capture_output=True, text=True, env=run_as.env(), cwd="/")
    if p.returncode != 0 or "Error:" in p.stderr or "Warning:" in p.stderr:
        raise BenchError(f"doveadm mailbox status on {location} failed: {p.stderr.strip()[-500:]}")
    return {row["mailbox"]: int(row["messages"]) for row in json.loads(p.stdout)}


def check(seen: dict[str, int], expected: dict[str, int], what: str) -> None:
    if seen != expected:
        raise BenchError(f"{what}: expected {expected}, found {seen}")


def run(bench: Bench, argv: list[str]) -> int:
    args = bench.args
    workdir = bench.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)
    root = os.geteuid() == 0
    home = workdir / "home"
    home.mkdir(exist_ok=True)
    if root:
        if ensure_user(args.user):
            bench.notes.append(f"created system user {args.user}")
        chown_tree(home, args.user)
        mail_as = RunAs(args.user, home)
    else:
        mail_as = RunAs(None, home)
    me = RunAs(None, home)
    dsync = find_dsync(args.dsync)
    dsync_as = mail_as
    if mail_as.user and interpreter_probe(dsync, mail_as) != interpreter_probe(dsync, me):
        dsync_as = me
        bench.notes.append(f"dsync (client and server) ran as root: as {mail_as.user} its interpreter does not "
                           "see its own installation")
    conf = workdir / "dovecot.conf"
    conf.write_text(DOVECOT_CONF)
    conf.chmod(0o644)

    master = make_corpus(workdir, args)
    expected = bench.expected = corpus_counts(master)
    if sum(expected.values()) != args.messages:
        raise BenchError(f"corpus {master} holds {sum(expected.values())} messages, not {args.messages}")
    bench.bytes = sum(f.stat().st_size for f in master.rglob("*") if f.is_file() and f.parent.name in ("cur", "new"))
    runs_dir = workdir / "runs"
    if runs_dir.exists():
        shutil.rmtree(runs_dir)
    runs_dir.mkdir()
    runs_dir.chmod(0o755)
    names = [f"{tool}-{kind}-{i}" for tool in args.tools for kind in ("tcp", "proxy") for i in range(args.runs)]
    homes = {tool: runs_dir / f"{tool}-homes" for tool in args.tools}
    users = {}
    for tool in args.tools:
        homes[tool].mkdir()
        users[tool] = runs_dir / f"{tool}-users"
        # All users up front: Dovecot notices a changed passwd-file only by its mtime.
        users[tool].write_text("".join(f"{n}:{{PLAIN}}{PASSWORD}::::{homes[tool] / n}::\n"
                                       for n in names if n.startswith(tool + "-")))
        users[tool].chmod(0o644)
    if "dsync" in homes and dsync_as.user:
        chown_tree(homes["dsync"], dsync_as.user)
    if "doveadm" in homes and mail_as.user:
        chown_tree(homes["doveadm"], mail_as.user)

    delay = args.delay_ms / 1000
    servers: list[DsyncServer | DovecotServer] = []
    proxies: list[DelayProxy] = []
    failures: list[str] = []
    try:
        dsrv = vsrv = None
        if "dsync" in args.tools:
            dsrv = DsyncServer(dsync, conf, users["dsync"], dsync_as, runs_dir / "dsync-server.log")
            servers.append(dsrv)
            dproxy = DelayProxy(dsrv.port, delay)
            proxies.append(dproxy)
            bench.ports.update({dsrv.port: "DSYNC_PORT", dproxy.port: "DSYNC_PROXY_PORT"})
        if "doveadm" in args.tools:
            vsrv = DovecotServer(users["doveadm"], args.user if root else None)
            servers.append(vsrv)
            vproxy = DelayProxy(vsrv.port, delay)
            proxies.append(vproxy)
            bench.ports.update({vsrv.port: "DOVEADM_PORT", vproxy.port: "DOVEADM_PROXY_PORT"})
            bench.paths[str(vsrv.base)] = "DOVECOT_BASE"
        for i in range(args.runs):
            print(f"run {i + 1}/{args.runs}", flush=True)
            if dsrv is not None:
                failures += run_dsync(bench, i, dsync, dsync_as, conf, users["dsync"], master, expected, dsrv.port,
                                      dproxy, homes["dsync"])
            if vsrv is not None:
                run_doveadm(bench, i, mail_as, conf, vsrv, master, expected, vproxy, homes["doveadm"])
        if dsrv is not None and dsync_as.user is None:
            api_check(bench, dproxy)
    finally:
        for p in proxies:
            p.close()
        logs = {}
        for s in servers:
            logs[type(s).__name__] = s.stop()
    for name, text in logs.items():
        # Our own readiness probe (connect, close) makes Dovecot log a handshake EOF: not a failure.
        bad = [line for line in text.splitlines() if any(w in line for w in ("Error", "Warning", "Traceback", "Panic"))
               and "disconnected before handshake" not in line]
        if bad:
            failures.append(f"{name} log: {' | '.join(bad[:5])}")

    report(bench, argv, failures)
    if not args.keep:
        shutil.rmtree(runs_dir, ignore_errors=True)
        shutil.rmtree(master, ignore_errors=True)
        (workdir / (master.name + ".complete")).unlink(missing_ok=True)
    return 1 if failures else 0


def timed(argv: list[str], run_as: RunAs, cwd: Path) -> tuple[float, str]:
    flush(drop=False)
    r = run_measured(argv, run_as, cwd)
    return r.seconds, r.stdout


def run_dsync(bench: Bench, i: int, dsync: str, run_as: RunAs, conf: Path, users: Path, master: Path,
              expected: dict[str, int], port: int, proxy: DelayProxy, homes: Path) -> list[str]:
    runs = bench.workdir / "runs"
    failures = []
    owner = run_as.user
    base = [dsync, "-c", str(conf), "-o", f"userdb=passwd-file:{users}"]

    def remote(src: Path, user: str, via: int, raw: Path, *extra: str) -> list[str]:
        return [*base, "-o", f"mail_location=maildir:{src}", "-o", f"doveadm_password={PASSWORD}",
                "sync", "-r", str(raw), *extra, "-u", user, f"tcp:127.0.0.1:{via}"]

    # (a) local Maildir -> Maildir.
    src, dst = runs / f"dsync-local-src-{i}", runs / f"dsync-local-dst-{i}"
    copy(master, src, owner)
    empty_dir(dst, owner)
    cmd = [*base, "-o", f"mail_location=maildir:{src}", "sync", f"maildir:{dst}"]
    secs, _ = timed(cmd, run_as, runs)
    bench.record(bench.case("dsync-local", "dsync initial, local Maildir->Maildir", True), secs, None, None, cmd)
    check(dsync_status(dsync, conf, dst, run_as), expected, f"dsync local destination {dst}")

    # (b) tcp direct, (c) tcp through the proxy: initial syncs into empty destinations.
    for kind, via, pxy in (("tcp", port, None), ("proxy", proxy.port, proxy)):
        src = runs / f"dsync-{kind}-src-{i}"
        copy(master, src, owner)
        user = f"dsync-{kind}-{i}"
        raw = runs / f"dsync-{kind}-{i}-initial.rawlog"
        if pxy:
            pxy.take()
        cmd = remote(src, user, via, raw)
        secs, _ = timed(cmd, run_as, runs)
        label = "dsync initial, tcp loopback" if kind == "tcp" else f"dsync initial, tcp + {bench.args.delay_ms:g} ms proxy"
        bench.record(bench.case(f"dsync-initial-{kind}", label, True), secs, rawlog_turnarounds(raw), pxy, cmd)
        check(dsync_status(dsync, conf, homes / user / "Maildir", run_as), expected, f"dsync {kind} destination")

    # No-change runs on the proxied pair: default (fast) directly and through the proxy,
    # then an untimed `-s ''` for a state, then the stateful no-change run through the proxy.
    src, user = runs / f"dsync-proxy-src-{i}", f"dsync-proxy-{i}"
    for kind, via, pxy in (("tcp", port, None), ("proxy", proxy.port, proxy)):
        raw = runs / f"dsync-nochange-{kind}-{i}.rawlog"
        if pxy:
            pxy.take()
        cmd = remote(src, user, via, raw)
        secs, _ = timed(cmd, run_as, runs)
        label = "dsync no change, default, tcp loopback" if kind == "tcp" else \
            f"dsync no change, default, tcp + {bench.args.delay_ms:g} ms proxy"
        bench.record(bench.case(f"dsync-nochange-{kind}", label, False), secs, rawlog_turnarounds(raw), pxy, cmd)
    raw = runs / f"dsync-state-{i}.rawlog"
    _, out = timed(remote(src, user, port, raw, "-s", ""), run_as, runs)
    state = out.strip().splitlines()[-1]
    bench.notes.append(f"untimed `-s ''` run {i + 1} (full compare to get a state): {rawlog_turnarounds(raw)} turnarounds")
    raw = runs / f"dsync-stateful-{i}.rawlog"
    proxy.take()
    cmd = remote(src, user, proxy.port, raw, "-s", state)
    secs, out = timed(cmd, run_as, runs)
    turns = rawlog_turnarounds(raw)
    bench.record(bench.case("dsync-stateful-proxy", f"dsync no change, stateful -s, tcp + {bench.args.delay_ms:g} ms proxy",
                            False), secs, turns, proxy, [*cmd[:-4], "STATE", *cmd[-3:]])
    limit = len(expected) + 5
    if turns > limit:
        failures.append(f"no-change stateful sync took {turns} turnarounds, more than mailboxes + 5 = {limit} ({raw})")
    bench.states[i] = out.strip().splitlines()[-1]
    return failures


def run_doveadm(bench: Bench, i: int, mail_as: RunAs, conf: Path, srv: DovecotServer, master: Path,
                expected: dict[str, int], proxy: DelayProxy, homes: Path) -> None:
    runs = bench.workdir / "runs"
    root_as = RunAs(None, mail_as.home)
    owner = mail_as.user

    def remote(src: Path, user: str, via: int, *extra: str) -> list[str]:
        # As root: -u asks the running Dovecot's auth, then doveadm drops to mail_uid.
        return ["doveadm", "-c", str(srv.conf), "-o", f"mail_location=maildir:{src}", "sync", *extra,
                "-u", user, f"tcp:127.0.0.1:{via}"]

    src, dst = runs / f"doveadm-local-src-{i}", runs / f"doveadm-local-dst-{i}"
    copy(master, src, owner)
    empty_dir(dst, owner)
    cmd = ["doveadm", "-c", str(conf), "-o", f"mail_location=maildir:{src}", "sync", f"maildir:{dst}"]
    secs, _ = timed(cmd, mail_as, runs)
    bench.record(bench.case("doveadm-local", "doveadm initial, local Maildir->Maildir", True), secs, None, None, cmd)
    check(doveadm_status(conf, dst, mail_as), expected, f"doveadm local destination {dst}")

    for kind, via, pxy in (("tcp", srv.port, None), ("proxy", proxy.port, proxy)):
        src = runs / f"doveadm-{kind}-src-{i}"
        copy(master, src, owner)
        user = f"doveadm-{kind}-{i}"
        if pxy:
            pxy.take()
        cmd = remote(src, user, via)
        secs, _ = timed(cmd, root_as, runs)
        label = "doveadm initial, tcp loopback" if kind == "tcp" else \
            f"doveadm initial, tcp + {bench.args.delay_ms:g} ms proxy"
        bench.record(bench.case(f"doveadm-initial-{kind}", label, True), secs, None, pxy, cmd)
        check(doveadm_status(conf, homes / user / "Maildir", mail_as), expected, f"doveadm {kind} destination")

    src, user = runs / f"doveadm-proxy-src-{i}", f"doveadm-proxy-{i}"
    for kind, via, pxy in (("tcp", srv.port, None), ("proxy", proxy.port, proxy)):
        if pxy:
            pxy.take()
        cmd = remote(src, user, via)
        secs, _ = timed(cmd, root_as, runs)
        label = "doveadm no change, default, tcp loopback" if kind == "tcp" else \
            f"doveadm no change, default, tcp + {bench.args.delay_ms:g} ms proxy"
        bench.record(bench.case(f"doveadm-nochange-{kind}", label, False), secs, None, pxy, cmd)
    _, out = timed(remote(src, user, srv.port, "-s", ""), root_as, runs)
    state = out.strip().splitlines()[-1]
    proxy.take()
    cmd = remote(src, user, proxy.port, "-s", state)
    secs, _ = timed(cmd, root_as, runs)
    bench.record(bench.case("doveadm-stateful-proxy",
                            f"doveadm no change, stateful -s, tcp + {bench.args.delay_ms:g} ms proxy", False),
                 secs, None, proxy, [*cmd[:-4], "STATE", *cmd[-3:]])


def api_check(bench: Bench, proxy: DelayProxy) -> None:
    """One stateful no-change sync in process: RemoteReplica.turnarounds must equal the rawlog count."""
    from dsync_transports.open import open_destination

    from dsync_core.api import open_storage
    from dsync_core.model import SyncAlgorithm, UserInfo
    from dsync_core.settings import Settings
    from dsync_core.sync import sync

    if 0 not in bench.states:
        return
    runs = bench.workdir / "runs"
    raw = runs / "api-check.rawlog"
    settings = Settings({"doveadm_password": PASSWORD, "dsync_rawlog": str(raw)})
    with open_storage(f"maildir:{runs / 'dsync-proxy-src-0'}") as storage:
        replica = open_destination(f"tcp:127.0.0.1:{proxy.port}", settings, UserInfo(name="dsync-proxy-0"))
        try:
            result = sync(storage, replica, algorithm=SyncAlgorithm.STATEFUL, state=bench.states[0])
        finally:
            replica.close()
    counted = rawlog_turnarounds(raw)
    verdict = "agree" if counted == replica.turnarounds else "DISAGREE"
    bench.notes.append(f"in-process check (sync() with RemoteReplica through the proxy, pair 1, -s): "
                       f"RemoteReplica.turnarounds = {replica.turnarounds}, rawlog count = {counted}: {verdict}; "
                       f"{result.seconds:.2f} s")


def report(bench: Bench, argv: list[str], failures: list[str]) -> None:
    args = bench.args
    rtt = 2 * args.delay_ms / 1000
    print()
    print(f"## Remote sync: turnarounds and latency ({args.messages} messages, {args.folders} mailboxes)")
    print()
    for line in machine_description():
        print(f"- {line}")
    print(f"- command (as root): python benchmarks/bench_remote.py {shlex.join(argv)}")
    print(f"- corpus: corpus.py --messages {args.messages} --folders {args.folders} --seed {args.seed} "
          f"--max-size {args.max_size:g}: {bench.bytes / 1048576:.1f} MiB")
    print(f"- proxy: +{args.delay_ms:g} ms each way (RTT {rtt * 1000:g} ms) per chunk, no bandwidth limit; "
          "TCP connect not delayed")
    print(f"- median of {args.runs} runs each, `sync` before every run, default durability on both tools")
    for note in bench.notes:
        print(f"- {note}")
    print()
    rows = [["run", "turnarounds", "proxy dir. changes", "median s", "min-max s", "msgs/s", "MiB/s",
             "(t_proxy - t_tcp) / RTT"]]
    for c in bench.cases.values():
        turns = "-"
        if c.turnarounds:
            lo, hi = min(c.turnarounds), max(c.turnarounds)
            turns = str(lo) if lo == hi else f"{lo}-{hi}"
        changes = "-"
        if c.changes:
            lo, hi = min(c.changes), max(c.changes)
            changes = str(lo) if lo == hi else f"{lo}-{hi}"
        med = statistics.median(c.seconds)
        rate = f"{args.messages / med:.0f}" if c.initial else "-"
        mib = f"{bench.bytes / 1048576 / med:.1f}" if c.initial else "-"
        cost = "-"
        if c.key.endswith("-proxy"):
            direct = bench.cases.get(c.key[: -len("proxy")] + "tcp")
            if direct:
                cost = f"{(med - statistics.median(direct.seconds)) / rtt:.0f}"
        rows.append([c.label, turns, changes, f"{med:.2f}", f"{min(c.seconds):.2f}-{max(c.seconds):.2f}", rate, mib,
                     cost])
    print(render(rows))
    print()
    print("Commands (WORKDIR = --workdir; STATE = the state the previous `-s` run printed):")
    print()
    for c in bench.cases.values():
        print(f"    {c.command}")
    print()
    if bench.cases.get("dsync-stateful-proxy"):
        limit = len(bench.expected) + 5
        worst = max(bench.cases["dsync-stateful-proxy"].turnarounds)
        print(f"No-change stateful dsync: at most {worst} turnarounds; the bound is mailboxes + 5 = {limit}: "
              f"{'OK' if worst <= limit else 'EXCEEDED'}")
    for f in failures:
        print(f"FAILED: {f}")


if __name__ == "__main__":
    sys.exit(main())
