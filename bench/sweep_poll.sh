#!/usr/bin/env bash
# Waits up to SECONDS (default 0) for the background sweep to end, then prints its state and
# last progress lines; once it has ended, packs its runs into $OUT/<preset>-runs.tar.xz.
# Same as `bench/sweep_session.sh poll SECONDS` (settings there). In one device call:
#   bench/sweep_poll.sh 560        (returns early when the sweep ends)
exec "$(dirname "$0")/sweep_session.sh" poll "${1:-0}"
