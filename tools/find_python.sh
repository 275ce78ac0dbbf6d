#!/usr/bin/env bash
# Prints the path of a Python >= 3.12 interpreter, or fails with a clear message.
# Order: $PYTHON, then 3.12 (the version the lock is resolved for) before newer ones, on PATH then pyenv.
set -u
ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; }
candidates=()
[ -n "${PYTHON:-}" ] && candidates+=("$PYTHON")
root=$(pyenv root 2>/dev/null || true)
for minor in 12 13 14; do
  p=$(command -v "python3.$minor" 2>/dev/null) && candidates+=("$p")
  [ -n "$root" ] && for p in $(ls -d "$root"/versions/3.$minor.*/bin/python3 2>/dev/null | sort -rV); do candidates+=("$p"); done
done
p=$(command -v python3 2>/dev/null) && candidates+=("$p")
for p in "${candidates[@]}"; do
  if ok "$p"; then echo "$p"; exit 0; fi
done
echo "error: no Python >= 3.12 found (tried: \$PYTHON, python3.12..3.14 and python3 on PATH, pyenv versions)." >&2
echo "       maxtext 0.2.5 needs Python >= 3.12. Install one (e.g. 'pyenv install 3.12') or set PYTHON=/path/to/python3.12." >&2
exit 1
