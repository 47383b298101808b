#!/usr/bin/env bash
# The main job on the embedded defaults (SQLite, local folders), end to end:
# a signed recording callback is verified, matched, its audio archived under
# ./var/recordings, a mail with the audio attached delivered to a local
# mailbox (./var/mail), and the provider's copy deleted.
#
# Ports: 8080 (recflow), 8025 (mail sink), 8099 (the stand-in provider that
# `recflow trigger` runs). Set RECFLOW_DEMO_KEEP=1 to leave the server up.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
export RECFLOW_CONFIG=config.example.yaml
# The demo's stand-in credentials, from the environment as real ones would be.
export SIGNALWIRE_API_TOKEN=${SIGNALWIRE_API_TOKEN:-PT_demo_token}
export SIGNALWIRE_SIGNING_KEY=${SIGNALWIRE_SIGNING_KEY:-PSK_demo_key}
py=.venv/bin/python
mkdir -p var/mail/tmp var/mail/new var/mail/cur

pids=()
cleanup() { [ "${#pids[@]}" -gt 0 ] && kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT

echo "demo: starting a mail sink on 127.0.0.1:8025 (messages land in var/mail/new)"
$py -m aiosmtpd -n -l 127.0.0.1:8025 -c aiosmtpd.handlers.Mailbox var/mail &
pids+=($!)

echo "demo: starting recflow serve on 127.0.0.1:8080"
.venv/bin/recflow serve >var/demo-serve.log 2>&1 &
pids+=($!)
$py - <<'PY'
import time, urllib.request
for _ in range(100):
    try:
        urllib.request.urlopen("http://127.0.0.1:8080/healthz", timeout=1)
        break
    except OSError:
        time.sleep(0.2)
else:
    raise SystemExit("demo: recflow serve did not start; see var/demo-serve.log")
PY

echo "demo: recflow trigger completed --duration 6"
.venv/bin/recflow trigger completed --duration 6

echo
echo "demo: waiting for the steps to finish"
$py - <<'PY'
import email, json, pathlib, re, subprocess, sys, time

def latest():
    out = subprocess.run([".venv/bin/recflow", "events", "--json", "--limit", "1"],
                         capture_output=True, text=True, check=True).stdout
    events = json.loads(out)
    return events[0] if events else None

deadline = time.time() + 60
while time.time() < deadline:
    event = latest()
    steps = event["steps"] if event else []
    if len(steps) >= 3 and all(s["state"] in ("done", "failed") for s in steps):
        break
    time.sleep(0.5)
else:
    sys.exit("demo: the steps did not finish in 60 s; see var/demo-serve.log")

log = pathlib.Path("var/demo-serve.log").read_text()
answer = re.findall(rf"callback \S+ .*recording={event['recording_sid']} .*-> (\d+)", log)
outputs = {s["action"]: s["outputs"] or {} for s in steps}
failed = [s for s in steps if s["state"] != "done"]
stored = outputs.get("store", {})
mails = sorted(pathlib.Path("var/mail/new").glob("*"), key=lambda p: p.stat().st_mtime)
print()
print(f"  verified  the callback's signature; the server answered {answer[-1] if answer else '?'}")
print(f"  matched   rule {', '.join(event['rules'])}")
print(f"  archived  {stored.get('url')} ({stored.get('bytes')} bytes)")
if mails:
    msg = email.message_from_bytes(mails[-1].read_bytes())
    names = [p.get_filename() for p in msg.walk() if p.get_filename()]
    print(f"  notified  {msg['To']}: {msg['Subject']!r}, attached {', '.join(names)}")
    print(f"            the mail: {mails[-1]}")
print(f"  deleted   the provider's copy: {outputs.get('delete', {}).get('deleted')}")
for step in failed:
    print(f"  FAILED    {step['action']}: {step['error']}")
print()
sys.exit(1 if failed else 0)
PY
echo "demo: recflow events --limit 1"
.venv/bin/recflow events --limit 1
echo
echo "demo: what the server logged (all of it in var/demo-serve.log):"
grep -E "recflow\.(receive|worker|action)" var/demo-serve.log | tail -n 7 | cut -d' ' -f3- | sed 's/^/  /'
if [ "${RECFLOW_DEMO_KEEP:-0}" = 1 ]; then
    echo "demo: RECFLOW_DEMO_KEEP=1: recflow serve keeps running; Ctrl-C to stop"
    wait
fi
