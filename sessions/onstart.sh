# Cloud GPU Shopper: start the node agent (heartbeats; powers the node off when it must)
PY="$(command -v python3 || command -v python || true)"
if [ -z "$PY" ] || [ -z "${SHOPPER_URL:-}" ]; then
  echo "shopper-agent: python3 or SHOPPER_URL missing; the node agent is not running" >&2
  exit 0
fi
# A fresh directory under $HOME (found next to the user's files, gone with a sandbox machine's files)
AGENT_DIR="$(mktemp -d "${TMPDIR:-${HOME:-/tmp}}/shopper-agent.XXXXXX" 2>/dev/null || mktemp -d)"
"$PY" - "$AGENT_DIR/agent.py" <<'PYEOF'
import os, sys, time, urllib.request
url = os.environ["SHOPPER_URL"].rstrip("/") + "/agent.py"
for attempt in range(10):
    try:
        with urllib.request.urlopen(url, timeout=20) as resp:
            data = resp.read()
        if data.startswith(b"#!"):
            break
    except Exception as exc:
        print("shopper-agent: download failed: %s" % exc, file=sys.stderr)
    time.sleep(min(3 * (attempt + 1), 30))
else:
    sys.exit("shopper-agent: could not download " + url)
with open(sys.argv[1], "wb") as f:
    f.write(data)
PYEOF
[ -s "$AGENT_DIR/agent.py" ] && cd "$AGENT_DIR" || exit 0
export SHOPPER_AGENT_STATE="${SHOPPER_AGENT_STATE:-$AGENT_DIR/state.json}"
SETSID="$(command -v setsid || true)"
nohup ${SETSID:+"$SETSID"} "$PY" "$AGENT_DIR/agent.py" >>"$AGENT_DIR/agent.log" 2>&1 </dev/null &
echo "shopper-agent: started (pid $!), log $AGENT_DIR/agent.log"
