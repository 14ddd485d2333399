#!/usr/bin/env bash
# Screenshots of the four MLflow UI screens over a store made by make_store.sh, in headless Chromium.
# Usage: experiments/mlflow_ui/take_screenshots.sh STORE_DIR OUT_DIR [PORT]
# Needs: apt-get install -y chromium; npm install playwright-core (NODE_PATH pointing at its node_modules).
set -euo pipefail
store=$(realpath "$1"); out=$(realpath -m "$2"); port=${3:-5077}; here=$(dirname "$(realpath "$0")")
mkdir -p "$out"
mlflow ui --backend-store-uri "sqlite:///$store/mlflow.db" --host 127.0.0.1 --port "$port" > "$(mktemp)" 2>&1 &
server=$!
trap 'kill $server' EXIT
for _ in $(seq 1 60); do curl -sf "http://127.0.0.1:$port/health" > /dev/null && break; sleep 2; done
read -r exp run version challenger model < <(python - "$store" <<'PY'
import sys
from mlflow import MlflowClient
c = MlflowClient(f"sqlite:///{sys.argv[1]}/mlflow.db")
exp = c.search_experiments(filter_string="name LIKE 'retrain-%'")[0]
champion = c.get_model_version_by_alias("surface", "champion")
challenger = c.get_model_version_by_alias("surface", "challenger")
(model,) = [m.model_id for m in c.search_logged_models([exp.experiment_id]) if m.source_run_id == champion.run_id]
print(exp.experiment_id, champion.run_id, champion.version, challenger.version, model)
PY
)
node "$here/screenshots.js" "http://127.0.0.1:$port" "$out" \
  "1_experiment_runs=#/experiments/$exp/runs?viewStateShareKey=headline&workflowType=machine_learning" \
  "2_run=#/experiments/$exp/runs/$run?workflowType=machine_learning" \
  "3_registry=#/models?workflowType=machine_learning" \
  "4_model_version=#/models/surface/versions/$version?workflowType=machine_learning" \
  "5_challenger_version=#/models/surface/versions/$challenger?workflowType=machine_learning" \
  "6_plain_experiment=#/experiments/$exp" \
  "7_logged_model=#/experiments/$exp/models/$model?workflowType=machine_learning"
