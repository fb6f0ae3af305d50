"""Benchmark `backup` and `sync` of dsync against Dovecot's doveadm on one Maildir corpus.

Times, for each tool on its own copies of the same generated corpus (see corpus.py):

- initial `backup` Maildir -> empty Maildir, then the same `backup` again (nothing changed);
- initial two-way `sync` Maildir <-> empty Maildir, then the same `sync` again;
- initial `backup` Maildir -> empty sdbox, and -> empty mdbox;
- incremental cost: on a synced pair, one change on the source (`flags add \\Seen` on one
  message, or `save` of one new message, each with the tool's own command), then the next
  `sync`, and one more `sync` with nothing changed; at several corpus sizes, so that
  t(big)/t(small) shows whether an incremental sync costs what changed or what is there.

Each measurement is repeated --runs times (the tools interleaved) and the median reported.
After each pair of runs the destination (and for `sync` the source) is checked with
`doveadm mailbox status`: its message and unseen counts must equal the corpus's.

Run as root, like bench_status.py (whose helpers this imports): doveadm runs as an
unprivileged user, and so does dsync unless its interpreter is not usable by that user:

    python benchmarks/bench_sync.py --messages 10000 --folders 3 --runs 3 --incremental 1000,10000
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_status import (  # noqa: E402  (needs the path above)
    DOVECOT_CONF,
    GNU_TIME,
    BenchError,
    Run,
    RunAs,
    chown_tree,
    copy_tree,
    ensure_user,
    find_dsync,
    flush,
    interpreter_probe,
    machine_description,
    make_corpus,
    render,
    run_measured,
)

TOOLS = ("doveadm", "dsync")
# One small message delivered by each tool's `save -m INBOX` in the incremental runs.
NEW_MESSAGE = (
    "From: Bench Sender <sender@example.org>\n"
    "To: Bench Rcpt <rcpt@example.org>\n"
    "Subject: incremental {n}\n"
    "Date: Mon, 01 Jan 2024 12:00:00 +0000\n"
    "Message-ID: <bench-sync-{tool}-{n}@example.org>\n"
    "\n"
    "One new message for the incremental sync benchmark ({n}).\n"
)


@attrs.frozen
class Counts:
    """Per mailbox (Maildir++ directory name, '' = INBOX): messages and unseen."""

    boxes: dict[str, tuple[int, int]]

    @property
    def messages(self) -> int:
        return sum(m for m, _ in self.boxes.values())

    def by_name(self) -> dict[str, tuple[int, int]]:
        """Keyed by the user-visible name doveadm prints ('/'-separated, INBOX for the root)."""
        return {("INBOX" if d == "" else decode_folder(d)): v for d, v in self.boxes.items()}


def decode_folder(dirname: str) -> str:
    from dsync_core.mutf7 import decode  # only for the one non-ASCII corpus folder name

    return decode(dirname.replace(".", "/"))


def corpus_counts(maildir: Path) -> Counts:
    """Messages and unseen per folder, read from the file names (independent of either tool)."""
    boxes = {}
    for folder in [maildir, *sorted(p for p in maildir.iterdir() if p.name.startswith(".") and p.is_dir())]:
        messages = unseen = 0
        for sub in ("new", "cur"):
            for entry in os.scandir(folder / sub):
                messages += 1
                flags = entry.name.rsplit(":2,", 1)[1] if sub == "cur" and ":2," in entry.name else ""
                unseen += "S" not in flags
        boxes["" if folder == maildir else folder.name[1:]] = (messages, unseen)
    return Counts(boxes)


@attrs.define
class Series:
    """The runs of one measurement by one tool."""

    runs: list[Run] = attrs.Factory(list)

    def median(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    def spread(self) -> str:
        secs = [r.seconds for r in self.runs]
        return f"{min(secs):.2f}-{max(secs):.2f}"

    def rss_mib(self) -> float:
        return max(r.max_rss_kib for r in self.runs) / 1024


@attrs.define
class Bench:
    args: argparse.Namespace
    workdir: Path
    conf: Path
    run_as: dict[str, RunAs]
    binary: dict[str, str]
    user: str | None
    # Copies and destinations; owned by the benchmark user, since doveadm creates destinations.
    scratch: Path
    notes: list[str] = attrs.Factory(list)
    # (measurement label, tool) -> runs
    results: dict[tuple[str, str], Series] = attrs.Factory(dict)
    messages_in: dict[str, int] = attrs.Factory(dict)

    # --- running commands -------------------------------------------------------------

    def command(self, tool: str, location: str, *rest: str) -> list[str]:
        extra = ["-o", f"mail_fsync={self.args.mail_fsync}"] if self.args.mail_fsync else []
        return [self.binary[tool], "-c", str(self.conf), *extra, "-o", f"mail_location={location}", *rest]

    def measure(self, label: str, tool: str, argv: list[str]) -> Run:
        flush(drop=False)
        run = run_measured(argv, self.run_as[tool], self.workdir)
        self.results.setdefault((label, tool), Series()).runs.append(run)
        print(f"  {tool:8} {label}: {run.seconds:.2f} s, {run.max_rss_kib / 1024:.1f} MiB", flush=True)
        return run

    def untimed(self, tool: str, argv: list[str], stdin: str | None = None) -> str:
        """A setup or check command; fails on a non-zero exit or a Dovecot warning."""
        who = self.run_as[tool]
        proc = subprocess.run(who.prefix() + argv, input=(stdin or "").encode(), capture_output=True,
                              env=who.env(), cwd=self.workdir)
        err = proc.stderr.decode("utf-8", "replace")
        if proc.returncode != 0:
            raise BenchError(f"{shlex.join(argv)} exited {proc.returncode}: {err.strip()[-2000:]}")
        bad = [line for line in err.splitlines() if "Warning:" in line or "Error:" in line or "Traceback" in line]
        if bad:
            raise BenchError(f"{shlex.join(argv)} complained: {' | '.join(bad[:5])}")
        return proc.stdout.decode("utf-8", "replace")

    def fresh_copy(self, master: Path, name: str) -> Path:
        copy = self.scratch / name
        copy_tree(master, copy, hardlink=not self.args.real_copy)
        if self.user:
            chown_tree(copy, self.user)
        return copy

    def clear(self, *paths: Path) -> None:
        for path in paths:
            shutil.rmtree(path, ignore_errors=True)

    # --- checking results ------------------------------------------------------------

    def check(self, what: str, location: str, expected: Counts, owner_fix: Path | None = None) -> None:
        """doveadm must see exactly the expected messages and unseen counts in every mailbox.

        Files our dsync wrote as root are handed to the benchmark user first (`owner_fix`),
        since doveadm must run unprivileged; this check runs after the timed runs of a pair.
        """
        if owner_fix is not None and self.user:
            chown_tree(owner_fix, self.user)
        out = self.untimed("doveadm", self.command("doveadm", location, "-f", "json", "mailbox", "status",
                                                   "messages unseen", "*"))
        try:
            rows = {row["mailbox"]: (int(row["messages"]), int(row["unseen"])) for row in json.loads(out)}
        except (json.JSONDecodeError, KeyError, ValueError) as exc:
            raise BenchError(f"{what}: doveadm mailbox status printed {out[:200]!r}: {exc}") from exc
        want = expected.by_name()
        if rows != want:
            raise BenchError(f"{what}: doveadm sees {sorted(rows.items())}, expected {sorted(want.items())}")

    # --- the measurements -------------------------------------------------------------

    def full_copies(self, master: Path, expected: Counts) -> None:
        """Initial and no-change backup and sync, and backup to sdbox and mdbox; `runs` rounds, tools interleaved."""
        n = expected.messages
        for rnd in range(self.args.runs):
            print(f"round {rnd + 1}/{self.args.runs}, {n} messages", flush=True)
            for tool in self.args.tools:
                own = tool == "dsync" and self.run_as["dsync"].user != self.user
                src = self.fresh_copy(master, f"src-backup-{tool}")
                dst = self.scratch / f"dst-backup-{tool}"
                self.clear(dst)
                backup = self.command(tool, f"maildir:{src}", "backup", f"maildir:{dst}")
                self.measure("backup, initial", tool, backup)
                self.measure("backup, no change", tool, backup)
                self.check(f"{tool} backup", f"maildir:{dst}", expected, dst if own else None)
                self.clear(src, dst)

                src = self.fresh_copy(master, f"src-sync-{tool}")
                dst = self.scratch / f"dst-sync-{tool}"
                self.clear(dst)
                sync = self.command(tool, f"maildir:{src}", "sync", f"maildir:{dst}")
                self.measure("sync, initial", tool, sync)
                self.measure("sync, no change", tool, sync)
                self.check(f"{tool} sync (destination)", f"maildir:{dst}", expected, dst if own else None)
                self.check(f"{tool} sync (source)", f"maildir:{src}", expected, src if own else None)
                self.clear(src, dst)

                src = self.fresh_copy(master, f"src-sdbox-{tool}")
                dst = self.scratch / f"dst-sdbox-{tool}"
                self.clear(dst)
                self.measure("backup to sdbox, initial", tool,
                             self.command(tool, f"maildir:{src}", "backup", f"sdbox:{dst}"))
                self.check(f"{tool} backup to sdbox", f"sdbox:{dst}", expected, dst if own else None)
                self.clear(src, dst)

                src = self.fresh_copy(master, f"src-mdbox-{tool}")
                dst = self.scratch / f"dst-mdbox-{tool}"
                self.clear(dst)
                self.measure("backup to mdbox, initial", tool,
                             self.command(tool, f"maildir:{src}", "backup", f"mdbox:{dst}"))
                self.check(f"{tool} backup to mdbox", f"mdbox:{dst}", expected, dst if own else None)
                self.clear(src, dst)
        for label in ("backup, initial", "sync, initial", "backup to sdbox, initial", "backup to mdbox, initial"):
            self.messages_in[label] = n

    def incremental(self, size: int) -> None:
        """One change on the source of a synced pair, then `sync`; `runs` changes of each kind per tool."""
        master = make_corpus(self.workdir, corpus_args(self.args, size))
        expected = corpus_counts(master)
        print(f"incremental, {expected.messages} messages", flush=True)
        pairs = {}
        for tool in self.args.tools:
            src = self.fresh_copy(master, f"src-inc-{tool}")
            dst = self.scratch / f"dst-inc-{tool}"
            self.clear(dst)
            sync = self.command(tool, f"maildir:{src}", "sync", f"maildir:{dst}")
            # The pair's first copy is setup, not measured: no fsync there (the state it leaves is the same).
            at = sync.index("-c") + 2
            setup_sync = sync if self.args.mail_fsync else [*sync[:at], "-o", "mail_fsync=never", *sync[at:]]
            self.untimed(tool, setup_sync)
            self.untimed(tool, sync)  # settle: anything left for a second run is not the change's cost
            unseen: list[int] = []
            if self.args.change_with == "tool":
                out = self.untimed(tool, self.command(tool, f"maildir:{src}", "-f", "json", "fetch", "uid",
                                                      "mailbox", "INBOX", "unseen"))
                unseen = [int(row["uid"]) for row in json.loads(out)]
                if len(unseen) < self.args.runs:
                    raise BenchError(f"{tool}: only {len(unseen)} unseen messages in INBOX for {self.args.runs} runs")
            pairs[tool] = (src, dst, sync, unseen)
        for rnd in range(self.args.runs):
            for tool in self.args.tools:
                src, dst, sync, unseen = pairs[tool]
                if self.args.change_with == "tool":
                    uid = unseen[rnd * len(unseen) // self.args.runs]
                    self.untimed(tool, self.command(tool, f"maildir:{src}", "flags", "add", "\\Seen",
                                                    "mailbox", "INBOX", "uid", str(uid)))
                else:
                    mark_one_seen(src, rnd, self.args.runs)
                self.measure(f"sync after 1 flag change, {size} msgs", tool, sync)
                text = NEW_MESSAGE.format(n=rnd, tool=tool)
                if self.args.change_with == "tool":
                    self.untimed(tool, self.command(tool, f"maildir:{src}", "save", "-m", "INBOX"), stdin=text)
                else:
                    deliver(src, text, rnd, self.user)
                self.measure(f"sync after 1 new message, {size} msgs", tool, sync)
                # Right after a sync: what a replicator's next run costs when nothing happened.
                self.measure(f"sync after no change, {size} msgs", tool, sync)
        # Every flagged message was unseen; every new one is unseen.
        inbox_msgs, inbox_unseen = expected.boxes[""]
        after = Counts({**expected.boxes, "": (inbox_msgs + self.args.runs, inbox_unseen)})
        for tool in self.args.tools:
            src, dst, _, _ = pairs[tool]
            own = tool == "dsync" and self.run_as["dsync"].user != self.user
            self.check(f"{tool} incremental ({size}) destination", f"maildir:{dst}", after, dst if own else None)
            self.check(f"{tool} incremental ({size}) source", f"maildir:{src}", after, src if own else None)
            self.clear(src, dst)
        if not self.args.keep:
            remove_corpus(self.workdir, master)

    def startup(self) -> None:
        """The floor under every number: start, open an empty Maildir, list its (one) mailbox."""
        empties = {}
        for tool in self.args.tools:
            empty = self.scratch / f"src-empty-{tool}"
            self.clear(empty)
            empty.mkdir()
            if self.user:
                chown_tree(empty, self.user)
            empties[tool] = empty
        for _ in range(self.args.runs):
            for tool in self.args.tools:
                self.measure("startup: mailbox list, empty Maildir", tool,
                             self.command(tool, f"maildir:{empties[tool]}", "mailbox", "list"))
        self.clear(*empties.values())

    # --- reporting --------------------------------------------------------------------

    def table(self) -> str:
        tools = self.args.tools
        head = ["measurement"]
        for tool in tools:
            head += [f"{tool} s", f"{tool} min-max"]
        if len(tools) == 2:
            head += ["ratio s"]
        for tool in tools:
            head += [f"{tool} msg/s"]
        for tool in tools:
            head += [f"{tool} RSS MiB"]
        if len(tools) == 2:
            head += ["ratio RSS"]
        rows = [head]
        labels = list(dict.fromkeys(label for label, _ in self.results))
        for label in labels:
            series = [self.results.get((label, tool)) for tool in tools]
            if None in series:
                continue
            row = [label]
            for s in series:
                row += [f"{s.median():.2f}", s.spread()]
            if len(tools) == 2:
                row += [f"{series[1].median() / series[0].median():.1f}x"]
            n = self.messages_in.get(label)
            row += [f"{n / s.median():.0f}" if n else "" for s in series]
            row += [f"{s.rss_mib():.1f}" for s in series]
            if len(tools) == 2:
                row += [f"{series[1].rss_mib() / series[0].rss_mib():.1f}x"]
            rows.append(row)
        return render(rows)

    def ratios(self, sizes: list[int]) -> list[str]:
        """t(1 change, biggest)/t(1 change, smallest) per tool and change kind."""
        if len(sizes) < 2:
            return []
        small, big = min(sizes), max(sizes)
        lines = []
        for kind in ("1 flag change", "1 new message", "no change"):
            parts = []
            for tool in self.args.tools:
                a = self.results.get((f"sync after {kind}, {small} msgs", tool))
                b = self.results.get((f"sync after {kind}, {big} msgs", tool))
                if a and b:
                    parts.append(f"{tool} {b.median() / a.median():.2f}x ({a.median():.2f} s -> {b.median():.2f} s)")
            lines.append(f"sync after {kind}: t({big})/t({small}) = " + "; ".join(parts)
                         + f" (mailbox {big / small:g}x bigger)")
        return lines


def mark_one_seen(maildir: Path, rnd: int, runs: int) -> None:
    """Set the S flag of one unseen INBOX message by renaming its file, as a Maildir MUA does."""
    unseen = sorted([("new", e.name) for e in os.scandir(maildir / "new")]
                    + [("cur", e.name) for e in os.scandir(maildir / "cur")
                       if ":2," in e.name and "S" not in e.name.rsplit(":2,", 1)[1]])
    if not unseen:
        raise BenchError(f"no unseen message left in {maildir}")
    sub, name = unseen[rnd * len(unseen) // max(runs, 1)]
    base, _, flags = name.partition(":2,")
    os.rename(maildir / sub / name, maildir / "cur" / f"{base}:2,{''.join(sorted(flags + 'S'))}")


def deliver(maildir: Path, text: str, rnd: int, user: str | None) -> None:
    """Deliver one message into new/ (write to tmp/, then rename), as a Maildir MDA does."""
    data = text.encode()
    vsize = len(data) + data.count(b"\n")
    name = f"{int(time.time())}.M{rnd}P{os.getpid()}.bench-sync,S={len(data)},W={vsize}"
    tmp = maildir / "tmp" / name
    tmp.write_bytes(data)
    if user:
        shutil.chown(tmp, user, user)
    os.rename(tmp, maildir / "new" / name)


def corpus_args(args: argparse.Namespace, messages: int) -> argparse.Namespace:
    return argparse.Namespace(messages=messages, folders=args.folders, seed=args.seed, max_size=args.max_size)


def remove_corpus(workdir: Path, master: Path) -> None:
    shutil.rmtree(master, ignore_errors=True)
    (workdir / (master.name + ".complete")).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time backup and sync of dsync and doveadm on one Maildir corpus.")
    parser.add_argument("--messages", type=int, default=10000, help="corpus size (default 10000)")
    parser.add_argument("--folders", type=int, default=3, help="mailboxes including INBOX (default 3)")
    parser.add_argument("--seed", type=int, default=1, help="corpus seed (default 1)")
    parser.add_argument("--max-size", type=float, default=10.0, metavar="MIB", help="message size cap (default 10)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each measurement, median reported (default 3)")
    parser.add_argument("--incremental", default="1000,10000", metavar="N,N",
                        help="corpus sizes for the one-change syncs ('' to skip; default 1000,10000)")
    parser.add_argument("--skip-full", action="store_true", help="only the incremental (and startup) measurements")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/dsync-bench-sync"),
                        help="where corpora and copies live; must be traversable by --user "
                             "(default /var/tmp/dsync-bench-sync)")
    parser.add_argument("--keep", action="store_true", help="keep the generated corpora (reused by the next run)")
    parser.add_argument("--real-copy", action="store_true",
                        help="give each run a real copy (cp -a) of the corpus instead of a hard-linked one (cp -al); "
                             "neither tool writes a message file in place, so hard links are safe")
    parser.add_argument("--change-with", choices=("tool", "maildir"), default="tool",
                        help="how the incremental runs make their change on the source: each tool's own "
                             "`flags add`/`save` (default), or directly in the Maildir, as an MUA (rename "
                             "adding S) and an MDA (new/ file) would")
    parser.add_argument("--mail-fsync", choices=("always", "optimized", "never"),
                        help="pass -o mail_fsync=VALUE to both tools (default: neither gets it, so both use "
                             "Dovecot's default, optimized)")
    parser.add_argument("--user", default="dsyncbench", help="unprivileged user to run the tools as when root")
    parser.add_argument("--dsync", help="dsync console script (default: next to this Python, else on PATH)")
    parser.add_argument("--doveadm", default="doveadm", help="doveadm binary (default doveadm on PATH)")
    parser.add_argument("--tools", default="doveadm,dsync", help="comma-separated tools to time (default doveadm,dsync)")
    args = parser.parse_args(argv)
    given = {t for t in args.tools.split(",") if t}
    if not given or given - set(TOOLS):
        parser.error("--tools takes doveadm, dsync or both")
    args.tools = [t for t in TOOLS if t in given]  # doveadm first: ratios are dsync/doveadm
    if "doveadm" not in args.tools:
        parser.error("--tools must include doveadm: it checks every destination")
    try:
        args.sizes = [int(s) for s in args.incremental.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--incremental takes comma-separated message counts, not {args.incremental!r}")
    if args.runs < 1 or args.messages < 1 or any(s < 1 for s in args.sizes):
        parser.error("--runs, --messages and --incremental sizes must be >= 1")
    try:
        return bench(args, argv if argv is not None else sys.argv[1:])
    except (BenchError, subprocess.CalledProcessError) as exc:
        print(f"bench_sync: {exc}", file=sys.stderr)
        return 1


def setup(args: argparse.Namespace) -> Bench:
    root = os.geteuid() == 0
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)
    home = workdir / "home"
    home.mkdir(exist_ok=True)
    notes = []
    user = None
    if root:
        if ensure_user(args.user):
            notes.append(f"created system user {args.user}")
        chown_tree(home, args.user)
        user = args.user
    else:
        notes.append("not root: both tools run as the current user")
    bench_as = RunAs(user, home)
    conf = workdir / "dovecot.conf"
    conf.write_text(DOVECOT_CONF)
    conf.chmod(0o644)
    if not os.path.exists(GNU_TIME):
        notes.append(f"{GNU_TIME} missing (apt-get install time): peak RSS from wait4() includes this "
                     "script's own RSS as a floor")
    binary = {"doveadm": shutil.which(args.doveadm) or args.doveadm}
    run_as = {"doveadm": bench_as, "dsync": bench_as}
    if "dsync" in args.tools:
        binary["dsync"] = find_dsync(args.dsync)
        if user:
            # As in bench_status.py: an interpreter under a private directory (pyenv in /root) may
            # start as the user but not find its own installation; then dsync runs as root.
            own = interpreter_probe(binary["dsync"], RunAs(None, home))
            theirs = interpreter_probe(binary["dsync"], bench_as)
            if theirs != own:
                run_as["dsync"] = RunAs(None, home)
                notes.append(f"dsync ran as root: as {user} its interpreter does not see its own installation "
                             f"({theirs or 'does not start'!s} instead of {own}); its files were chowned to "
                             f"{user} before each doveadm check")
    # Any earlier, interrupted run may have left copies behind.
    scratch = workdir / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    scratch.chmod(0o755)
    if user:
        chown_tree(scratch, user)
    return Bench(args, workdir, conf, run_as, binary, user, scratch, notes)


def bench(args: argparse.Namespace, argv: list[str]) -> int:
    b = setup(args)
    started = time.monotonic()
    b.startup()
    if not args.skip_full:
        master = make_corpus(b.workdir, corpus_args(args, args.messages))
        expected = corpus_counts(master)
        if expected.messages != args.messages:
            raise BenchError(f"corpus {master} holds {expected.messages} messages, not {args.messages}")
        b.full_copies(master, expected)
        if not args.keep and args.messages not in args.sizes:
            remove_corpus(b.workdir, master)
    for size in sorted(args.sizes):
        b.incremental(size)
    elapsed = time.monotonic() - started

    print()
    durability = f"mail_fsync={args.mail_fsync}" if args.mail_fsync else "default durability"
    print(f"## sync and backup, {args.messages} messages ({durability})")
    for line in machine_description():
        print(f"- {line}")
    print(f"- command: python benchmarks/bench_sync.py {shlex.join(argv)} ({elapsed / 60:.1f} min)")
    for tool in args.tools:
        who = b.run_as[tool].user or "root"
        shown = [Path(b.binary[tool]).name, *b.command(tool, "maildir:SRC", "backup", "maildir:DST")[1:]]
        shown[shown.index("-c") + 1] = "dovecot.conf"
        print(f"- {tool} (as {who}): {shlex.join(shown)}")
    print(f"- medians of {args.runs} runs, the tools interleaved; `sync` (flush) before every timed run; "
          f"page cache warm; {'real copies (cp -a)' if args.real_copy else 'hard-linked copies (cp -al)'} "
          "of the corpus as sources; peak RSS = max over the runs (GNU time %M)")
    for note in b.notes:
        print(f"- {note}")
    print("- every destination (and both sides of each sync) checked with doveadm mailbox status: "
          "messages and unseen per mailbox as expected, no warnings")
    if args.sizes:
        how = ("with each tool's own `flags add '\\Seen' mailbox INBOX uid N` (an unseen message) and `save -m INBOX`"
               if args.change_with == "tool" else
               "directly in the source Maildir: one unseen INBOX file renamed to add S (as an MUA), "
               "one file delivered to new/ via tmp/ (as an MDA)")
        print(f"- incremental changes made {how}; the pair was synced twice before (untimed)")
    for line in b.ratios(args.sizes):
        print(f"- {line}")
    print()
    print(b.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
