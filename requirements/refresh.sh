#!/usr/bin/env bash
# Re-resolve the lock files from their loose inputs (pyproject.toml, requirements/serve.in).
#   bash requirements/refresh.sh             # keep the locked versions, add/drop what the inputs changed
#   bash requirements/refresh.sh --upgrade   # move every package to its newest allowed release
# Needs uv (`pip install uv`). The locks are universal (markers for every platform and Python >= 3.11);
# the tests are run on CPython 3.11, Linux x86_64. After a refresh, run the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
uv=${UV:-uv}
common=(--universal --python-version 3.11 --quiet --custom-compile-command "bash requirements/refresh.sh")
# what the README's commands, .ci/run and the tests install: the library, its test extra (and what that pulls in)
"$uv" pip compile pyproject.toml --extra test "${common[@]}" "$@" -o requirements/test.lock
# what the serving image installs (Dockerfile); shared packages at the test lock's versions
"$uv" pip compile requirements/serve.in -c requirements/test.lock "${common[@]}" "$@" -o requirements/serve.lock
python3 requirements/check.py --static
