#!/usr/bin/env bash
# The quick-start demo: install dsync-py into .venv (once), build a Dovecot-compatible
# Maildir from the bundled sample mail with doveadm-style commands, show it, convert it to
# sdbox and mdbox, and sync a change back.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD

if [ -z "${DSYNC:-}" ]; then
  if [ ! -x .venv/bin/dsync ]; then
    echo "==> Installing dsync-core, dsync-maildir and dsync-dbox into .venv"
    python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check -e . -e plugins/maildir -e plugins/mdbox
  fi
  DSYNC=$top/.venv/bin/dsync
fi

out=$top/demo-out
rm -rf "$out"
mkdir -p "$out"
loc="maildir:$out/Maildir"
ds() { "$DSYNC" -o "mail_location=$loc" "$@"; }

echo "==> Building $out/Maildir from examples/sample-mail"
(cd examples/sample-mail && find . -name '*.eml' | LC_ALL=C sort) | while read -r f; do
  box=${f#./}
  box=${box%/*}
  if ! ds mailbox list | grep -qxF "$box"; then
    ds mailbox create -s "$box"
  fi
  ds save -m "$box" < "examples/sample-mail/$f"
done

echo "==> Applying flags from examples/sample-mail.flags"
grep -v '^#' examples/sample-mail.flags | while IFS=$'\t' read -r box file flags; do
  msgid=$(grep -m1 -i '^Message-ID:' "examples/sample-mail/$box/$file" | sed 's/^[^:]*: *//')
  ds flags add "$flags" mailbox "$box" header Message-ID "$msgid"
done

echo
echo "==> dsync mailbox list"
ds mailbox list
echo
echo "==> dsync mailbox status 'messages unseen uidnext uidvalidity guid' '*'"
ds -f table mailbox status 'messages unseen uidnext uidvalidity guid' '*'
echo
echo "==> dsync fetch 'mailbox uid flags hdr.subject' all"
ds -f table fetch 'mailbox uid flags hdr.subject' all
echo
echo "==> dsync -f json fetch 'mailbox uid guid flags' mailbox Archive/2024"
ds -f json fetch 'mailbox uid guid flags' mailbox Archive/2024
echo
echo
echo "==> dsync -o mail_location=$loc backup sdbox:$out/sdbox   (convert to Dovecot's sdbox)"
ds backup --json "sdbox:$out/sdbox"
echo
echo "==> mark the invoice read in the sdbox copy, then a two-way sync brings it back"
"$DSYNC" -o "mail_location=sdbox:$out/sdbox" flags add '\Seen' mailbox INBOX header Message-ID '<inv-2024-09-0042@shop.example>'
ds -v sync "sdbox:$out/sdbox"
ds -f table fetch 'mailbox uid flags hdr.subject' mailbox INBOX
echo
echo "==> dsync -o mail_location=sdbox:$out/sdbox backup mdbox:$out/mdbox   (and on to mdbox)"
"$DSYNC" -o "mail_location=sdbox:$out/sdbox" backup "mdbox:$out/mdbox"
"$DSYNC" -o "mail_location=mdbox:$out/mdbox" -f table mailbox status 'messages unseen uidnext guid' '*'
echo
echo "Done: $(find "$out/Maildir" -type f -path '*/cur/*' -o -type f -path '*/new/*' | wc -l) messages in $out/Maildir"
echo "(a Maildir that Dovecot reads as it is), the same mail as sdbox in $out/sdbox"
echo "and as mdbox in $out/mdbox."
echo "Try: $DSYNC -o mail_location=$loc fetch 'uid flags hdr.subject' mailbox INBOX"
