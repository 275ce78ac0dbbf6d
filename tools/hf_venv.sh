#!/usr/bin/env bash
# Creates (once) and prints the interpreter of .venv-hf/, the Python 3.11 venv with torch (CPU),
# transformers and diffusers that the converter and VQGAN tests use as the Hugging Face reference
# (requirements/hf-parity.in says why it is separate). Rebuilt when requirements/hf-parity.lock changes. Fails loudly; never skips.
# Order for the interpreter: $PYTHON311, python3.11 on PATH, pyenv versions 3.11.*.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-hf
LOCK=requirements/hf-parity.lock
STAMP=$VENV/.installed

fail() { echo "error: cannot create $VENV: $*" >&2; exit 1; }

want=$(sha256sum "$LOCK" | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ]; then
  echo "$PWD/$VENV/bin/python"; exit 0
fi

exec 9>"$VENV.lock"   # one creator at a time
flock 9
if [ -x "$VENV/bin/python" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ]; then
  echo "$PWD/$VENV/bin/python"; exit 0
fi

ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' >/dev/null 2>&1; }
candidates=()
[ -n "${PYTHON311:-}" ] && candidates+=("$PYTHON311")
p=$(command -v python3.11 2>/dev/null) && candidates+=("$p")
root=$(pyenv root 2>/dev/null || true)
[ -n "$root" ] && for p in $(ls -d "$root"/versions/3.11.*/bin/python3.11 2>/dev/null | sort -rV); do candidates+=("$p"); done
py=""
for p in "${candidates[@]}"; do
  if ok "$p"; then py=$p; break; fi
done
[ -n "$py" ] || fail "no Python 3.11 found (tried \$PYTHON311, python3.11 on PATH, pyenv versions 3.11.*); install one (e.g. 'pyenv install 3.11') or set PYTHON311=/path/to/python3.11"

start=$(date +%s)
echo "creating $VENV with $py (torch CPU + transformers + diffusers; once)" >&2
rm -rf "$VENV"
"$py" -m venv "$VENV" || fail "'$py -m venv' failed"
if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --only-binary=:all: -r "$LOCK" >&2; then
  rm -rf "$VENV"
  fail "pip could not install $LOCK (torch==2.13.0+cpu comes from pip's configured find-links, e.g. /opt/wheels)"
fi
"$VENV/bin/python" -c 'import torch, transformers, safetensors, diffusers' || { rm -rf "$VENV"; fail "the installed packages do not import"; }
echo "$want" > "$STAMP"
echo "$VENV ready in $(( $(date +%s) - start )) s" >&2
echo "$PWD/$VENV/bin/python"
