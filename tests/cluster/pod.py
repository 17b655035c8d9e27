"""One inference "pod" of the cluster test, run as its own process with its own channel.

    python pod.py append GATEWAY SESSION...   appends turns 0 and 1 of each session
    python pod.py resume GATEWAY SESSION...   fetches each session FULL and checks it bit for bit

Prints one JSON line: {"done": [...], "failed": {session: error}}. Exits 0 even when sessions
failed: the test decides what the failures mean.
"""

from __future__ import annotations

import json
import sys

from session_data import append_turn, full_mismatch

from nexuskv import Client, NexusKVError


def main(argv: list[str]) -> int:
    action, gateway, sessions = argv[1], argv[2], argv[3:]
    done: list[str] = []
    failed: dict[str, str] = {}
    with Client(gateway, timeout=20.0, retries=0) as client:
        for sid in sessions:
            try:
                if action == "append":
                    append_turn(client, sid, 0)
                    append_turn(client, sid, 1)
                elif action == "resume":
                    mismatch = full_mismatch(client.get_cache(sid, method="full"), sid, 2)
                    if mismatch:
                        failed[sid] = mismatch
                        continue
                else:
                    raise SystemExit(f"unknown action {action!r}")
                done.append(sid)
            except NexusKVError as e:
                failed[sid] = str(e)
    print(json.dumps({"done": done, "failed": failed}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
