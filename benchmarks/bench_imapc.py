"""Benchmark an IMAP -> Maildir migration: dsync imapc vs doveadm imapc, mbsync, offlineimap.

One private Dovecot IMAP server on 127.0.0.1 serves a generated corpus (corpus.py, written
straight into the server's Maildir and indexed by Dovecot before any timing). Each tool
copies the whole account into a fresh Maildir, ``--runs`` times; then each tool runs twice
more on its finished copy (the "nothing changed" re-run a migration repeats; the first may
still settle a tool's state, the second is the steady cost). Every copy is
checked to hold all messages. Durability: dsync and doveadm run with ``mail_fsync=never``,
mbsync and offlineimap fsync by default; one dsync row with dsync's default fsync and one
mbsync row with ``FSync no`` compare like with like (the table names each row's setting). The load
average is printed before and after (the numbers mean little on a busy machine).

Every run copies into a new directory and the copies are deleted only at the end (a
deletion between timed runs makes the next copy pay for it, see ``main``): the work
directory needs room for runs x tools copies of the corpus (about 0.5 GB each at 10k).

Run as root (Dovecot runs the mail as an unprivileged user; so does doveadm here):

    python benchmarks/bench_imapc.py --messages 10000 --runs 3

mbsync is Debian's ``isync``, offlineimap Debian's ``offlineimap3``; a tool that is not
installed is skipped with a note (and listed as such in the table).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "plugins" / "imapc" / "tests"))

from bench_status import BenchError, RunAs, chown_tree, flush, run_measured  # noqa: E402
from corpus import CorpusOptions, write_corpus  # noqa: E402
from imapc_server import DovecotServer, _mail_user  # noqa: E402

DOVEADM_CONF = """\
log_path = /dev/stderr
ssl = no
mail_fsync = never
namespace inbox {
  inbox = yes
  separator = /
}
"""

MBSYNC_CONF = """\
{fsync}
IMAPAccount src
Host 127.0.0.1
Port {port}
User {user}
Pass "{password}"
SSLType None
AuthMechs LOGIN

IMAPStore src-remote
Account src

MaildirStore dst-local
Inbox {dest}/
SubFolders Maildir++

Channel migrate
Far :src-remote:
Near :dst-local:
Patterns *
Create Near
Sync Pull
SyncState *
"""

OFFLINEIMAP_CONF = """\
[general]
accounts = src
metadata = {meta}

[Account src]
localrepository = dst
remoterepository = srcimap

[Repository dst]
type = Maildir
localfolders = {dest}

[Repository srcimap]
type = IMAP
remotehost = 127.0.0.1
remoteport = {port}
remoteuser = {user}
remotepass = {password}
ssl = no
starttls = no
readonly = True
"""


PACKAGES = {"mbsync": "isync", "offlineimap": "offlineimap3"}


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def count_messages(root: Path) -> int:
    n = 0
    for dirpath, _dirs, files in os.walk(root):
        if os.path.basename(dirpath) in ("cur", "new"):
            n += len(files)
    return n


def warm(server: DovecotServer) -> list[str]:
    """Let Dovecot index every folder (and read the files) before anything is timed."""
    import imapclient

    c = imapclient.IMAPClient("127.0.0.1", port=server.port, ssl=False, timeout=600)
    c.login(server.user, server.password)
    names = []
    for flags, _sep, name in c.list_folders():
        if b"\\Noselect" in flags:
            continue
        names.append(name)
        c.select_folder(name, readonly=True)
        uids = c.search("ALL")
        for i in range(0, len(uids), 1000):
            c.fetch(uids[i : i + 1000], ["UID", "FLAGS", "RFC822.SIZE", "BODY.PEEK[HEADER]"])
    c.logout()
    return names


def tools(server: DovecotServer, work: Path, mail_user: str) -> dict[str, tuple[list[str], RunAs, str]]:
    """name -> (argv with {dest}, who runs it, durability note)."""
    me = RunAs(None, work / "home")
    du = RunAs(mail_user, work / "home")
    imapc = ["-o", "imapc_host=127.0.0.1", "-o", f"imapc_port={server.port}", "-o", f"imapc_user={server.user}",
             "-o", f"imapc_password={server.password}"]
    out: dict[str, tuple[list[str], RunAs, str]] = {
        "dsync imapc (4 connections)": (
            [sys.executable, "-m", "dsync_core", "-o", "mail_location=imapc:", *imapc, "-o", "mail_fsync=never",
             "backup", "maildir:{dest}"], me, "mail_fsync=never"),
        "dsync imapc (4 connections, mail_fsync=optimized)": (
            [sys.executable, "-m", "dsync_core", "-o", "mail_location=imapc:", *imapc, "backup", "maildir:{dest}"],
            me, "fsync (default)"),
        "dsync imapc (1 connection)": (
            [sys.executable, "-m", "dsync_core", "-o", "mail_location=imapc:", *imapc, "-o", "mail_fsync=never",
             "-o", "imapc_max_connections=1", "backup", "maildir:{dest}"], me, "mail_fsync=never"),
    }
    conf = work / "doveadm.conf"
    conf.write_text(DOVEADM_CONF)
    conf.chmod(0o644)
    out["doveadm backup -R imapc:"] = (
        ["doveadm", "-c", str(conf), "-o", "mail_location=maildir:{dest}", *imapc,
         "-o", "imapc_features=rfc822.size fetch-headers", "-o", "mail_prefetch_count=20", "backup", "-R", "imapc:"],
        du, "mail_fsync=never")
    if shutil.which("mbsync"):
        out["mbsync"] = (["mbsync", "-c", "{dest}.mbsyncrc", "-q", "-a"], me, "fsync (default)")
        out["mbsync (FSync no)"] = (["mbsync", "-c", "{dest}.mbsyncrc", "-q", "-a"], me, "FSync no")
    if shutil.which("offlineimap"):
        out["offlineimap"] = (["offlineimap", "-c", "{dest}.offlineimaprc", "-u", "quiet"], me, "fsync (default)")
    return out


def prepare(name: str, dest: Path, server: DovecotServer, run_as: RunAs) -> None:
    if dest.exists():
        raise BenchError(f"{dest} exists: every run copies into a new directory")
    dest.mkdir(parents=True)  # mbsync needs it to exist
    if name.startswith("mbsync"):
        Path(f"{dest}.mbsyncrc").write_text(
            MBSYNC_CONF.format(port=server.port, user=server.user, password=server.password, dest=dest,
                               fsync="FSync no" if "FSync no" in name else ""))
    if name == "offlineimap":
        meta = Path(f"{dest}.offlineimap-meta")
        shutil.rmtree(meta, ignore_errors=True)
        Path(f"{dest}.offlineimaprc").write_text(
            OFFLINEIMAP_CONF.format(meta=meta, port=server.port, user=server.user, password=server.password, dest=dest))
    if run_as.user:
        chown_tree(dest, run_as.user)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=10000)
    ap.add_argument("--folders", type=int, default=5)
    ap.add_argument("--max-size", type=int, default=2 * 1024 * 1024, help="cap of one message's size (bytes)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", default="")
    ap.add_argument("--only", action="append", default=[], help="run only tools whose name contains this")
    args = ap.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-imapc-"))
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o755)
    (work / "home").mkdir(exist_ok=True)
    mail_user = _mail_user().pw_name
    server = DovecotServer()
    try:
        root = Path(server.maildir())
        t0 = time.perf_counter()
        stats = write_corpus(root, CorpusOptions(messages=args.messages, folders=args.folders,
                                                 max_size=args.max_size))
        chown_tree(Path(server.base) / "mail", mail_user)
        folders = warm(server)
        print(f"corpus: {stats.messages} messages, {stats.total_bytes / 1e6:.0f} MB in {len(folders)} folders "
              f"(written and indexed in {time.perf_counter() - t0:.1f}s)")
        print(f"{os.cpu_count()} CPUs, load average before: {_load()}", flush=True)
        for missing in ("mbsync", "offlineimap"):
            if not shutil.which(missing):
                print(f"note: {missing} is not installed (Debian: {PACKAGES[missing]}): skipped", flush=True)
        rows = []
        for name, (cmd, run_as, durability) in tools(server, work, mail_user).items():
            if args.only and not any(o in name for o in args.only):
                continue
            slug = "".join(ch if ch.isalnum() else "-" for ch in name)
            times, rss = [], []
            try:
                for run in range(args.runs):
                    # A new directory for each run, nothing deleted until the end: on ext4
                    # without a journal the inode allocator steps over every inode freed in the
                    # last minutes, so a copy made right after deleting the previous one pays
                    # for that deletion (up to a third of its time here).
                    dest = work / f"dest-{slug}-{run + 1}"
                    prepare(name, dest, server, run_as)
                    flush(False)
                    r = run_measured([c.replace("{dest}", str(dest)) for c in cmd], run_as, work)
                    times.append(r.seconds)
                    rss.append(r.max_rss_kib)
                got = count_messages(dest)
                if got != stats.messages:
                    raise BenchError(f"{name} copied {got} of {stats.messages} messages")
                # Two re-runs: a tool may still settle its state on the first (mbsync does,
                # 1 s for 10k), the second is the steady "nothing changed" cost.
                reruns = []
                for _ in range(2):
                    flush(False)
                    r = run_measured([c.replace("{dest}", str(dest)) for c in cmd], run_as, work)
                    reruns.append(r)
                    if count_messages(dest) != stats.messages:
                        raise BenchError(f"{name}: a re-run left {count_messages(dest)} of {stats.messages} messages")
                med = statistics.median(times)
                rows.append([name, f"{med:.2f}", f"{min(times):.2f}", f"{max(times):.2f}",
                             f"{stats.messages / med:.0f}", f"{reruns[0].seconds:.2f}", f"{reruns[1].seconds:.2f}",
                             f"{max(rss) / 1024:.0f}", f"{max(x.max_rss_kib for x in reruns) / 1024:.0f}", durability])
            except BenchError as e:
                rows.append([name, "failed", "", "", "", "", "", "", "", str(e)[:120]])
            print(" | ".join(rows[-1]), flush=True)
        for missing in ("mbsync", "offlineimap"):
            if not shutil.which(missing):
                rows.append([missing, "not installed", "", "", "", "", "", "", "", ""])
        print(f"load average after: {_load()}")
        head = ["tool", "median s", "min s", "max s", "msgs/s", "1st re-run s", "2nd re-run s", "peak RSS MiB",
                "re-run RSS MiB", "durability"]
        print()
        print("| " + " | ".join(head) + " |")
        print("|" + "|".join("---" for _ in head) + "|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
    finally:
        server.stop()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
