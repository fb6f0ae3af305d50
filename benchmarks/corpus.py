"""Deterministic generator of a realistic Maildir corpus for benchmarks.

Writes a plain Maildir (Maildir++ folders optional) straight to disk, one message at
a time, with file names as Dovecot's own generator makes them
(``<time>.M<usecs>P<pid>.<host>,S=<size>,W=<vsize>[:2,<flags>]``) and each file's
mtime set to the message's received time. No dovecot-uidlist and no index are
written, so every tool under test builds its own state.

    python benchmarks/corpus.py --messages 100000 --folders 1 --seed 1 OUTDIR

The same arguments always give byte-identical files.
"""

from __future__ import annotations

import argparse
import base64
import bisect
import math
import os
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import attrs

KIB = 1024
MIB = 1024 * 1024

# Received times are spread evenly over these years (UTC).
START_TIME = 1420070400  # 2015-01-01
END_TIME = 1735689600  # 2025-01-01

# Maildir++ directory names (already modified UTF-7, '.'-separated hierarchy);
# INBOX is the root. The non-ASCII one is "Entwürfe".
FOLDER_NAMES = [
    "Sent",
    "Archive",
    "Archive.2019",
    "Archive.2020",
    "Lists",
    "Lists.dovecot",
    "Lists.python-dev",
    "Entw&APw-rfe",
    "Trash",
    "Projects",
    "Projects.alpha",
    "Projects.beta",
    "Receipts",
    "Travel",
    "Family",
    "Newsletters",
]

FIRST_NAMES = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy",
               "Mallory", "Niaj", "Olivia", "Peggy", "Rupert", "Sybil", "Trent", "Victor", "Walter", "Zoe"]
LAST_NAMES = ["Smith", "Jones", "Miller", "Garcia", "Brown", "Wilson", "Taylor", "Clark", "Lewis", "Young"]
# Display names that need RFC 2047 encoded-words.
NON_ASCII_NAMES = ["Jörg Müller", "François Lefèvre", "Zoë Ångström", "Łukasz Żółć", "Søren Kierkegård",
                   "José Núñez", "Дмитрий Иванов", "山田 太郎", "Αλέξης Παπαδόπουλος", "Ülkü Öztürk"]
DOMAINS = ["example.org", "example.com", "example.net", "mail.example.org", "lists.example.org",
           "corp.example.com", "uni.example.edu"]
SUBJECT_WORDS = ["meeting", "report", "quarterly", "budget", "review", "draft", "invoice", "release", "notes",
                 "travel", "plan", "update", "question", "patch", "build", "failure", "schedule", "lunch",
                 "project", "proposal", "contract", "feedback", "minutes", "agenda", "photos", "weekend"]
NON_ASCII_SUBJECTS = ["Grüße aus München", "Réunion de l'équipe", "Überweisung bestätigt", "Приглашение на встречу",
                      "会議の議事録", "Καλημέρα", "Fwd: Rückfrage zur Rechnung", "Señales de vida ☺",
                      "Återkoppling på förslaget", "Zażółć gęślą jaźń"]
BODY_WORDS = ("the of and to in is that for it as was with be by on not he this are or his from at which but have "
              "an they you were her she there been one all we their has would when if so no will what can out "
              "more other about into some could them these than then two may first any like now my such make "
              "over our even most me state after also made many did must before back see through way where get "
              "much go well your know should down work year because come people just new those too how little "
              "us good very could great think server mailbox message folder index release build meeting").split()
NON_ASCII_WORDS = ["Grüße", "Straße", "naïve", "café", "résumé", "Ångström", "façade", "jalapeño", "Zürich"]
ATTACHMENT_TYPES = [("application/pdf", "pdf"), ("image/jpeg", "jpg"), ("image/png", "png"),
                    ("application/zip", "zip"),
                    ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", "docx")]
WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


@attrs.frozen
class CorpusOptions:
    messages: int
    folders: int = 1
    seed: int = 1
    max_size: int = 10 * MIB
    host: str = "bench.example.org"
    attachment_rate: float = 0.10
    huge_rate: float = 0.001
    seen_rate: float = 0.70


@attrs.frozen
class CorpusStats:
    messages: int
    total_bytes: int
    per_folder: dict[str, int]


def encoded_word(text: str) -> str:
    """RFC 2047 B-encoding in UTF-8 (short texts only, so one word is enough)."""
    return "=?UTF-8?B?" + base64.b64encode(text.encode()).decode() + "?="


def rfc2822_date(t: int, tz_minutes: int) -> str:
    local = time.gmtime(t + tz_minutes * 60)
    sign = "+" if tz_minutes >= 0 else "-"
    off = abs(tz_minutes)
    return (f"{WEEKDAYS[local.tm_wday]}, {local.tm_mday} {MONTHS[local.tm_mon - 1]} {local.tm_year} "
            f"{local.tm_hour:02d}:{local.tm_min:02d}:{local.tm_sec:02d} {sign}{off // 60:02d}{off % 60:02d}")


class Generator:
    """Produces (folder, received time, flags, message bytes) in received-time order."""

    def __init__(self, opts: CorpusOptions) -> None:
        self.opts = opts
        self.rng = random.Random(opts.seed)
        rng = self.rng
        # Text pool: wrapped lines of words, sliced at random line starts for bodies.
        lines = []
        for _ in range(20000):
            words = [rng.choice(BODY_WORDS) for _ in range(rng.randint(6, 13))]
            if rng.random() < 0.05:
                words[rng.randrange(len(words))] = rng.choice(NON_ASCII_WORDS)
            if rng.random() < 0.1:
                words.append("\n")  # paragraph break
            lines.append(" ".join(words).capitalize().replace(" \n", ".\n") + "\n")
        self.text_pool = "".join(lines).encode()
        self.text_line_starts = [0]
        for line in lines[:-1]:
            self.text_line_starts.append(self.text_line_starts[-1] + len(line.encode()))
        # Base64 pool: 76-character lines of random data, big enough for the largest attachment.
        raw_len = min(opts.max_size, 10 * MIB) * 3 // 4 + 57 * 64
        raw_len -= raw_len % 57
        self.b64_pool = base64.encodebytes(rng.randbytes(raw_len))  # 57 raw bytes per 77-byte line
        self.people = [f"{f} {ln}" for f in FIRST_NAMES for ln in LAST_NAMES]
        # Folder weights: INBOX about half, the rest Zipf-like.
        self.folders = ["INBOX"] + FOLDER_NAMES[: max(0, opts.folders - 1)]
        if opts.folders - 1 > len(FOLDER_NAMES):
            self.folders += [f"Folder{i}" for i in range(len(FOLDER_NAMES), opts.folders - 1)]
        weights = [1.0] + [1.0 / (i + 1) for i in range(len(self.folders) - 1)]
        if len(self.folders) > 1:
            rest = sum(weights[1:])
            weights = [1.0] + [w / rest for w in weights[1:]]
        total = sum(weights)
        acc = 0.0
        self.folder_cum = []
        for w in weights:
            acc += w / total
            self.folder_cum.append(acc)
        self.used_names: set[tuple[int, int]] = set()

    # -- pieces -------------------------------------------------------------

    def address(self) -> str:
        rng = self.rng
        domain = rng.choice(DOMAINS)
        if rng.random() < 0.12:
            name = rng.choice(NON_ASCII_NAMES)
            local = f"user{rng.randrange(1000)}"
            return f"{encoded_word(name)} <{local}@{domain}>"
        name = rng.choice(self.people)
        local = name.lower().replace(" ", ".")
        if rng.random() < 0.15:
            return f"<{local}@{domain}>"
        return f"{name} <{local}@{domain}>"

    def subject(self) -> str:
        rng = self.rng
        if rng.random() < 0.10:
            return encoded_word(rng.choice(NON_ASCII_SUBJECTS))
        words = " ".join(rng.choice(SUBJECT_WORDS) for _ in range(rng.randint(2, 8))).capitalize()
        prefix = rng.choices(["", "Re: ", "Fwd: ", "RE: ", "[list] "], [60, 25, 6, 4, 5])[0]
        return prefix + words

    def text(self, size: int) -> bytes:
        """About `size` bytes of text starting at a random line of the pool."""
        pool = self.text_pool
        size = min(size, len(pool) // 2)
        start = self.text_line_starts[self.rng.randrange(len(self.text_line_starts) // 2)]
        end = pool.find(b"\n", start + size)
        return pool[start : end + 1] if end >= 0 else pool[start:]

    def base64_data(self, raw_size: int) -> bytes:
        lines = max(1, raw_size // 57)
        pool_lines = len(self.b64_pool) // 77
        if lines > pool_lines:
            lines = pool_lines
        first = self.rng.randrange(pool_lines - lines + 1)
        return self.b64_pool[first * 77 : (first + lines) * 77]

    def received_lines(self, t: int, to_addr: str, tz: int) -> list[str]:
        rng = self.rng
        hops = rng.randint(2, 4)
        out = []
        hop_t = t
        for h in range(hops):
            n = rng.randrange(1, 20)
            ip = f"{rng.choice(['192.0.2', '198.51.100', '203.0.113'])}.{rng.randrange(1, 255)}"
            qid = "".join(rng.choice("0123456789ABCDEF") for _ in range(10))
            by = "mail.example.org" if h == 0 else f"relay{n}.example.net"
            line = (f"Received: from mx{n}.example.net (mx{n}.example.net [{ip}])\n"
                    f"\tby {by} (Postfix) with ESMTPS id {qid}\n"
                    f"\tfor <{to_addr}>; {rfc2822_date(hop_t, tz)}")
            out.append(line)
            hop_t -= rng.randint(0, 30)
        return out

    # -- messages -----------------------------------------------------------

    def message(self, index: int, t: int) -> bytes:
        rng = self.rng
        opts = self.opts
        tz = rng.choice([0, 60, 120, -300, -240, -420, 330, 540, 600])
        sent = t - rng.randint(1, 600)
        frm = self.address()
        to = self.address()
        to_bare = to[to.rfind("<") + 1 : -1]
        headers = ["Return-Path: <" + frm[frm.rfind("<") + 1 : -1] + ">"]
        headers += self.received_lines(t, to_bare, tz)
        headers += [f"From: {frm}", f"To: {to}"]
        if rng.random() < 0.3:
            headers.append("Cc: " + ", ".join(self.address() for _ in range(rng.randint(1, 4))))
        headers += [
            f"Subject: {self.subject()}",
            f"Date: {rfc2822_date(sent, tz)}",
            f"Message-ID: <{index:08x}.{rng.getrandbits(48):012x}@{rng.choice(DOMAINS)}>",
        ]
        if rng.random() < 0.3:
            headers.append(f"In-Reply-To: <{rng.getrandbits(64):016x}@{rng.choice(DOMAINS)}>")
        headers.append("MIME-Version: 1.0")
        # Body: log-normal, median about 4 KiB, so most messages land between 2 and 20 KiB.
        body_size = int(min(rng.lognormvariate(math.log(4 * KIB), 0.8), 200 * KIB))
        body = self.text(body_size)

        attach_size = 0
        r = rng.random()
        if r < opts.huge_rate:
            attach_size = rng.randint(5 * MIB, 10 * MIB)
        elif r < opts.attachment_rate:
            # Log-normal attachment, median 200 KiB, clipped to 50 KiB - 2 MiB.
            attach_size = int(min(max(rng.lognormvariate(math.log(200 * KIB), 1.0), 50 * KIB), 2 * MIB))
        if attach_size:
            # Encoded size is 4/3 of raw; keep the whole message under the cap.
            attach_size = min(attach_size, max(0, (opts.max_size - len(body) - 4 * KIB) * 3 // 4))
        if not attach_size:
            headers += ["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit"]
            return ("\n".join(headers) + "\n\n").encode() + body
        boundary = f"=_{rng.getrandbits(64):016x}"
        ctype, ext = rng.choice(ATTACHMENT_TYPES)
        headers.append(f'Content-Type: multipart/mixed; boundary="{boundary}"')
        parts = [
            ("\n".join(headers) + "\n\nThis is a multi-part message in MIME format.\n\n").encode(),
            f"--{boundary}\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n".encode(),
            body,
            (f"\n--{boundary}\nContent-Type: {ctype}; name=\"file{index}.{ext}\"\n"
             f"Content-Disposition: attachment; filename=\"file{index}.{ext}\"\n"
             "Content-Transfer-Encoding: base64\n\n").encode(),
            self.base64_data(attach_size),
            f"\n--{boundary}--\n".encode(),
        ]
        return b"".join(parts)

    def flags(self) -> str | None:
        """Maildir info suffix flags, or None for a message left in new/."""
        rng = self.rng
        if rng.random() >= self.opts.seen_rate:
            return None
        r = rng.random()
        if r < 0.12:
            return "RS"
        if r < 0.16:
            return "FS"
        if r < 0.17:
            return "FRS"
        return "S"

    def folder(self) -> str:
        return self.folders[min(bisect.bisect_left(self.folder_cum, self.rng.random()), len(self.folders) - 1)]

    def unique_stamp(self, t: int) -> tuple[int, int]:
        """(seconds, microseconds) never used before, as Dovecot's generator guarantees per process."""
        usecs = self.rng.randrange(1000000)
        while (t, usecs) in self.used_names:
            usecs = (usecs + 1) % 1000000
        self.used_names.add((t, usecs))
        return t, usecs

    def __iter__(self) -> Iterator[tuple[str, str, int, bytes]]:
        n = self.opts.messages
        span = END_TIME - START_TIME
        host = self.opts.host.replace("/", r"\057").replace(":", r"\072")
        for i in range(n):
            t = START_TIME + int(span * (i + self.rng.random()) / n)
            folder = self.folder()
            flags = self.flags()
            data = self.message(i, t)
            secs, usecs = self.unique_stamp(t)
            pid = self.rng.randrange(300, 4194304)
            vsize = len(data) + data.count(b"\n")  # size with CRLF line endings
            name = f"{secs}.M{usecs}P{pid}.{host},S={len(data)},W={vsize}"
            if flags is None:
                yield folder, "new/" + name, t, data
            else:
                yield folder, f"cur/{name}:2,{flags}", t, data


def folder_dir(root: Path, folder: str) -> Path:
    return root if folder == "INBOX" else root / ("." + folder)


def make_maildir(path: Path, is_folder: bool) -> None:
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    if is_folder:
        (path / "maildirfolder").touch()


def write_corpus(root: Path, opts: CorpusOptions) -> CorpusStats:
    gen = Generator(opts)
    for folder in gen.folders:
        make_maildir(folder_dir(root, folder), folder != "INBOX")
    dirs = {folder: str(folder_dir(root, folder)) + "/" for folder in gen.folders}
    per_folder = dict.fromkeys(gen.folders, 0)
    total = 0
    count = 0
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for folder, rel, t, data in gen:
        fd = os.open(dirs[folder] + rel, flags, 0o600)
        try:
            _write_all(fd, data)
            os.utime(fd, (t, t))
        finally:
            os.close(fd)
        per_folder[folder] += 1
        total += len(data)
        count += 1
    return CorpusStats(count, total, per_folder)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a deterministic, realistic Maildir corpus.")
    parser.add_argument("outdir", type=Path, help="Maildir root to create (must not exist or be empty)")
    parser.add_argument("--messages", type=int, default=100000, help="number of messages (default 100000)")
    parser.add_argument("--folders", type=int, default=1, help="number of mailboxes including INBOX (default 1)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--max-size", type=float, default=10.0, metavar="MIB",
                        help="cap on one message's size in MiB (default 10)")
    parser.add_argument("--host", default="bench.example.org", help="host name part of the file names")
    args = parser.parse_args(argv)
    if args.messages < 0 or args.folders < 1:
        parser.error("--messages must be >= 0 and --folders >= 1")
    if args.outdir.exists() and any(args.outdir.iterdir()):
        print(f"corpus: {args.outdir} exists and is not empty", file=sys.stderr)
        return 1
    opts = CorpusOptions(messages=args.messages, folders=args.folders, seed=args.seed,
                         max_size=max(64 * KIB, int(args.max_size * MIB)), host=args.host)
    started = time.monotonic()
    stats = write_corpus(args.outdir, opts)
    elapsed = time.monotonic() - started
    print(f"{stats.messages} messages, {stats.total_bytes} bytes ({stats.total_bytes / MIB:.1f} MiB) "
          f"in {len(stats.per_folder)} mailbox(es), written in {elapsed:.1f} s")
    for folder, n in stats.per_folder.items():
        if len(stats.per_folder) > 1:
            print(f"  {folder}: {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
