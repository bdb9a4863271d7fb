#!/usr/bin/env bash
# Install everything the test suite needs on a fresh machine, then run the whole suite (browser tests included).
# This is the README's test command; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi
python -m pip install -q -r requirements.txt -r tests/requirements.txt
python -m pip install -q -r requirements-ray.txt  # the optional cluster backend (tests/test_ray.py)
# tests/a1111_reference.py loads k-diffusion's sampling code by path; its declared deps are training-only
python -m pip install -q --no-deps k-diffusion==0.1.1.post1 torchdiffeq
python -m ruff check .
# Both cores: one worker group per test module (a module's server starts once, in one worker); the browser modules
# are one group that runs first, on one worker, one module at a time, while the other worker runs everything else
# (tests/conftest.py sets the groups). Tiny models are built once per worker. Extra arguments go to pytest.
python -m pytest -q -p no:cacheprovider -n 2 --dist loadgroup --no-loadscope-reorder "$@" tests
