#!/usr/bin/env bash
# A small MLflow store as `adapt retrain --register` writes it, for the screenshots in this folder.
# Usage: experiments/mlflow_ui/make_store.sh STORE_DIR   (run from the repository root)
# Three retrains of the product's synthetic surfaces with the default backbone, registered as 'surface':
# linear seed 1 (first: champion), linear seed 2, tip-adapter seed 1 (each goes through the champion gate).
set -euo pipefail
store=$(realpath -m "${1:?usage: make_store.sh STORE_DIR}")
repo=$(pwd)
mkdir -p "$store"
cd "$store"
adapt() { PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" python -c 'import sys; from adapt.cli import main; sys.exit(main(sys.argv[1:]))' "$@"; }
for spec in "linear 1" "linear 2" "tip-adapter 1"; do
  set -- $spec
  adapt retrain --data synthetic --method "$1" --seed "$2" --shots 8 --output-dir "runs/$1-seed$2" --register surface
done
adapt models list --tracking-uri "sqlite:///$store/mlflow.db"
