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

echo "demo: waiting for the steps to finish"
$py - <<'PY'
import json, subprocess, time
deadline = time.time() + 60
while time.time() < deadline:
    out = subprocess.run([".venv/bin/recflow", "events", "--json", "--limit", "1"],
                         capture_output=True, text=True, check=True).stdout
    events = json.loads(out)
    steps = events[0]["steps"] if events else []
    if steps and all(s["state"] in ("done", "failed") for s in steps) and len(steps) >= 3:
        break
    time.sleep(0.5)
PY
.venv/bin/recflow events --limit 1

echo
echo "demo: archived audio:"
find var/recordings -type f -name '*.wav' -exec ls -l {} \;
echo "demo: mail received:"
$py - <<'PY'
import email, pathlib
for path in sorted(pathlib.Path("var/mail/new").glob("*")):
    msg = email.message_from_bytes(path.read_bytes())
    names = [p.get_filename() for p in msg.walk() if p.get_filename()]
    print(f"  {path}: To {msg['To']}, Subject {msg['Subject']!r}, attachments {names}")
PY
echo "demo: what the server logged (all of it in var/demo-serve.log):"
grep -E "recflow\.(receive|worker|action)" var/demo-serve.log | cut -d' ' -f3- | sed 's/^/  /' 
if [ "${RECFLOW_DEMO_KEEP:-0}" = 1 ]; then
    echo "demo: RECFLOW_DEMO_KEEP=1: recflow serve keeps running; Ctrl-C to stop"
    wait
fi
