"""Benchmark `mailbox status` of dsync against Dovecot's doveadm on one Maildir corpus.

Each tool gets its own copy of a generated corpus (see corpus.py), so neither sees the
other's state (dovecot-uidlist, Dovecot's index, our change log). "cold" is the first run
on a fresh copy after `sync` and, when permitted, dropping the page cache; "warm" is the
median of later runs, each after `sync`. Peak RSS comes from wait4() on the command.

Run as root so doveadm can run as an unprivileged user (Dovecot never touches mail as
root) and the page cache can be dropped:

    python benchmarks/bench_status.py --messages 100000 --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pwd
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import attrs

HERE = Path(__file__).resolve().parent
FIELDS = "messages uidnext uidvalidity unseen guid highestmodseq"
# Fields whose values both tools must agree on (uidvalidity and guid are random).
COMPARED = ("messages", "unseen", "uidnext")
DOVECOT_CONF = """\
log_path = /dev/stderr
namespace inbox {
  inbox = yes
  separator = /
}
"""


class BenchError(Exception):
    """A benchmark step failed; the message says which and why."""


@attrs.frozen
class RunAs:
    """Who a command runs as: None = the current user."""

    user: str | None
    home: Path

    def prefix(self) -> list[str]:
        if self.user is None:
            return []
        return ["setpriv", f"--reuid={self.user}", f"--regid={self.user}", "--clear-groups", "--"]

    def env(self) -> dict[str, str]:
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "TZ": "UTC", "HOME": str(self.home)}
        env["USER"] = self.user or pwd.getpwuid(os.getuid()).pw_name
        return env


@attrs.frozen
class Run:
    seconds: float
    max_rss_kib: int
    stdout: str


@attrs.define
class ToolResult:
    name: str
    command: list[str]
    copy: Path
    run_as: RunAs
    cold: Run | None = None
    warm: list[Run] = attrs.Factory(list)

    def warm_median(self) -> float:
        return statistics.median(r.seconds for r in self.warm)

    def peak_rss_mib(self) -> float:
        return max(r.max_rss_kib for r in [self.cold, *self.warm] if r) / 1024


GNU_TIME = "/usr/bin/time"


def run_measured(argv: list[str], run_as: RunAs, cwd: Path) -> Run:
    """Run a command, returning wall time and its peak RSS.

    The RSS comes from GNU time (Debian package `time`): Linux carries a process's
    high-water RSS across exec, so a child forked straight from this Python process would
    report at least this process's RSS; time's own footprint is about 2 MiB.
    """
    full = run_as.prefix() + argv
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile(mode="r") as rss:
        wrapped = [GNU_TIME, "-f", "%M", "-o", rss.name, *full] if os.path.exists(GNU_TIME) else full
        started = time.perf_counter()
        proc = subprocess.Popen(wrapped, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=run_as.env(), cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", "replace")
        stderr = err.read().decode("utf-8", "replace")
        lines = rss.read().split()
        max_rss = int(lines[-1]) if wrapped is not full and lines and lines[-1].isdigit() else usage.ru_maxrss
    if proc.returncode != 0:
        raise BenchError(f"{shlex.join(full)} exited {proc.returncode}: {stderr.strip()[-2000:]}")
    # A Dovecot warning means it repaired something: the numbers would not be comparable.
    bad = [line for line in stderr.splitlines() if "Warning:" in line or "Error:" in line or "Traceback" in line]
    if bad:
        raise BenchError(f"{shlex.join(full)} complained: {' | '.join(bad[:5])}")
    return Run(elapsed, max_rss, stdout)


def flush(drop: bool) -> bool:
    """`sync`, then drop the page cache if asked; returns whether the drop was permitted."""
    os.sync()
    if not drop:
        return False
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def ensure_user(name: str) -> bool:
    """Create the unprivileged benchmark user if missing; returns True if it was created."""
    try:
        pwd.getpwnam(name)
        return False
    except KeyError:
        pass
    subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                    "--shell", "/usr/sbin/nologin", name], check=True)
    return True


def chown_tree(root: Path, user: str) -> None:
    subprocess.run(["chown", "-R", f"{user}:{user}", str(root)], check=True)


def copy_tree(src: Path, dst: Path, hardlink: bool) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    subprocess.run(["cp", "-al" if hardlink else "-a", str(src), str(dst)], check=True)


def make_corpus(workdir: Path, args: argparse.Namespace) -> Path:
    """Generate the master corpus once per (messages, folders, seed, cap); reused with --keep."""
    name = f"corpus-m{args.messages}-f{args.folders}-s{args.seed}-c{args.max_size:g}"
    master = workdir / name
    marker = workdir / (name + ".complete")
    if marker.exists() and master.is_dir():
        print(f"reusing corpus {master}")
        return master
    if master.exists():
        shutil.rmtree(master)
    marker.unlink(missing_ok=True)
    cmd = [sys.executable, str(HERE / "corpus.py"), "--messages", str(args.messages), "--folders",
           str(args.folders), "--seed", str(args.seed), "--max-size", f"{args.max_size:g}", str(master)]
    print("$ " + shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    marker.touch()
    return master


def find_dsync(explicit: str | None) -> str:
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "dsync"
    if beside.exists():
        return str(beside)
    found = shutil.which("dsync")
    if not found:
        raise BenchError("no dsync console script next to this Python or on PATH; pass --dsync")
    return found


def interpreter_probe(script: str, run_as: RunAs) -> str | None:
    """Version and stdlib directory of the script's interpreter as seen by run_as, or None if it cannot run."""
    try:
        first = Path(script).read_bytes()[:200].split(b"\n", 1)[0].decode()
    except (OSError, UnicodeDecodeError):
        return None
    argv = first[2:].split() if first.startswith("#!") else [sys.executable]
    argv += ["-c", "import os, sys; print(sys.version, os.path.dirname(os.__file__))"]
    try:
        proc = subprocess.run(run_as.prefix() + argv, env=run_as.env(), capture_output=True, text=True, cwd="/")
    except OSError:
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def parse_status(stdout: str, tool: str) -> dict[str, dict[str, str]]:
    try:
        rows = json.loads(stdout)
    except json.JSONDecodeError as exc:
        raise BenchError(f"{tool} printed no JSON list: {exc}: {stdout[:200]!r}") from exc
    return {row["mailbox"]: row for row in rows}


def compare(results: list[ToolResult]) -> str:
    """Check both tools report the same counts; returns a one-line summary."""
    seen = {r.name: parse_status(r.cold.stdout, r.name) for r in results if r.cold}
    (a_name, a), (b_name, b) = seen.items()
    if set(a) != set(b):
        raise BenchError(f"mailbox lists differ: {a_name} {sorted(a)} vs {b_name} {sorted(b)}")
    for box in a:
        for field in COMPARED:
            if a[box].get(field) != b[box].get(field):
                raise BenchError(f"{box} {field}: {a_name} says {a[box].get(field)}, {b_name} {b[box].get(field)}")
    total = sum(int(row["messages"]) for row in a.values())
    unseen = sum(int(row["unseen"]) for row in a.values())
    return f"both tools agree on {', '.join(COMPARED)} for {len(a)} mailbox(es): {total} messages, {unseen} unseen"


def machine_description() -> list[str]:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kib / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    dovecot = subprocess.run(["doveadm", "-c", "/dev/null", "-o", "log_path=/dev/null", "--version"],
                             capture_output=True, text=True).stdout.strip()
    if not dovecot:
        dovecot = subprocess.run(["dovecot", "--version"], capture_output=True, text=True).stdout.strip()
    return [
        f"{os.cpu_count()} x {cpu}{mem}, Linux {platform.release()}",
        f"Dovecot {dovecot or 'unknown'}; Python {platform.python_version()} ({sys.executable})",
    ]


def table(results: list[ToolResult]) -> str:
    rows = [["tool", "cold s", "warm median s", "warm min-max s", "peak RSS MiB"]]
    for r in results:
        warm = [w.seconds for w in r.warm]
        rows.append([r.name, f"{r.cold.seconds:.2f}", f"{r.warm_median():.2f}",
                     f"{min(warm):.2f}-{max(warm):.2f}", f"{r.peak_rss_mib():.1f}"])
    by = {r.name: r for r in results}
    if len(by) < 2:
        return render(rows)
    d, v = by["dsync"], by["doveadm"]
    rows.append(["ratio dsync/doveadm", f"{d.cold.seconds / v.cold.seconds:.1f}x",
                 f"{d.warm_median() / v.warm_median():.1f}x", "", f"{d.peak_rss_mib() / v.peak_rss_mib():.1f}x"])
    return render(rows)


def render(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time `mailbox status` of dsync and doveadm on one Maildir corpus.")
    parser.add_argument("--messages", type=int, default=100000, help="corpus size (default 100000)")
    parser.add_argument("--folders", type=int, default=1, help="mailboxes including INBOX (default 1)")
    parser.add_argument("--seed", type=int, default=1, help="corpus seed (default 1)")
    parser.add_argument("--max-size", type=float, default=10.0, metavar="MIB", help="message size cap (default 10)")
    parser.add_argument("--runs", type=int, default=3, help="warm runs per tool, median reported (default 3)")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/dsync-bench"),
                        help="where corpora live; must be traversable by --user (default /var/tmp/dsync-bench)")
    parser.add_argument("--keep", action="store_true", help="keep corpus and copies (the corpus is then reused)")
    parser.add_argument("--hardlink", action="store_true",
                        help="give each tool a hard-linked copy (cp -al) instead of a real one: faster to set up, "
                             "but both copies share inodes and page cache")
    parser.add_argument("--user", default="dsyncbench", help="unprivileged user to run the tools as when root")
    parser.add_argument("--dsync", help="dsync console script (default: next to this Python, else on PATH)")
    parser.add_argument("--doveadm", default="doveadm", help="doveadm binary (default doveadm on PATH)")
    parser.add_argument("--tools", default="doveadm,dsync", help="comma-separated tools to time (default doveadm,dsync)")
    args = parser.parse_args(argv)
    args.tools = [t for t in args.tools.split(",") if t]
    if not args.tools or set(args.tools) - {"doveadm", "dsync"}:
        parser.error("--tools takes doveadm, dsync or both")
    if args.runs < 1 or args.messages < 1:
        parser.error("--runs and --messages must be >= 1")
    try:
        return bench(args, argv if argv is not None else sys.argv[1:])
    except (BenchError, subprocess.CalledProcessError) as exc:
        print(f"bench_status: {exc}", file=sys.stderr)
        return 1


def bench(args: argparse.Namespace, argv: list[str]) -> int:
    notes = []
    root = os.geteuid() == 0
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)
    home = workdir / "home"
    home.mkdir(exist_ok=True)
    if root:
        if ensure_user(args.user):
            notes.append(f"created system user {args.user}")
        chown_tree(home, args.user)
        bench_as = RunAs(args.user, home)
    else:
        notes.append("not root: both tools run as the current user and the page cache cannot be dropped")
        bench_as = RunAs(None, home)
    conf = workdir / "dovecot.conf"
    conf.write_text(DOVECOT_CONF)
    conf.chmod(0o644)

    if not os.path.exists(GNU_TIME):
        notes.append(f"{GNU_TIME} missing (apt-get install time): peak RSS from wait4() includes this "
                     "script's own RSS as a floor")
    dsync = find_dsync(args.dsync) if "dsync" in args.tools else "dsync"
    doveadm = shutil.which(args.doveadm) or args.doveadm
    dsync_as = bench_as
    if "dsync" in args.tools and bench_as.user:
        # An interpreter under a private directory (e.g. pyenv in /root) may start as the user but then
        # not find its own standard library; then run ours as root rather than on a mixed interpreter.
        own = interpreter_probe(dsync, RunAs(None, home))
        theirs = interpreter_probe(dsync, bench_as)
        if theirs != own:
            dsync_as = RunAs(None, home)
            notes.append(f"dsync ran as root: as {bench_as.user} its interpreter does not see its own "
                         f"installation ({theirs or 'does not start'!s} instead of {own})")

    master = make_corpus(workdir, args)
    results = []
    for name in args.tools:
        copy = workdir / f"copy-{name}"
        started = time.monotonic()
        copy_tree(master, copy, args.hardlink)
        if root:
            chown_tree(copy, args.user)
        print(f"copied corpus for {name} in {time.monotonic() - started:.1f} s ({'cp -al' if args.hardlink else 'cp -a'})",
              flush=True)
        location = f"mail_location=maildir:{copy}"
        tool = doveadm if name == "doveadm" else dsync
        cmd = [tool, "-c", str(conf), "-o", location, "-f", "json", "mailbox", "status", FIELDS, "*"]
        results.append(ToolResult(name, cmd, copy, bench_as if name == "doveadm" else dsync_as))

    dropped = set()
    for r in results:
        dropped.add(flush(drop=root))
        r.cold = run_measured(r.command, r.run_as, workdir)
        print(f"{r.name} cold: {r.cold.seconds:.2f} s, {r.cold.max_rss_kib / 1024:.1f} MiB", flush=True)
    if dropped != {True}:
        notes.append("page cache NOT dropped before cold runs (echo 3 > /proc/sys/vm/drop_caches not permitted)")
    else:
        notes.append("cold runs: sync + echo 3 > /proc/sys/vm/drop_caches before each (permitted)")
    for i in range(args.runs):
        # Interleave the tools so slow drift on the machine hits both alike.
        for r in results:
            flush(drop=False)
            run = run_measured(r.command, r.run_as, workdir)
            r.warm.append(run)
            print(f"{r.name} warm {i + 1}: {run.seconds:.2f} s, {run.max_rss_kib / 1024:.1f} MiB", flush=True)
    agreement = compare(results) if len(results) == 2 else "only one tool timed: outputs not compared"

    print()
    print("## mailbox status")
    for line in machine_description():
        print(f"- {line}")
    print(f"- command: python benchmarks/bench_status.py {shlex.join(argv)}")
    for r in results:
        shown = [Path(r.command[0]).name, *r.command[1:]]
        print(f"- {r.name} (as {r.run_as.user or 'root' if root else 'current user'}): {shlex.join(shown)}")
    for note in notes:
        print(f"- {note}")
    print(f"- {agreement}")
    print()
    print(table(results))

    if not args.keep:
        for r in results:
            shutil.rmtree(r.copy, ignore_errors=True)
        shutil.rmtree(master, ignore_errors=True)
        (workdir / (master.name + ".complete")).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
