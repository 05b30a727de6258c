#!/usr/bin/env bash
# Submit one pafo_ray pipeline run to a Ray cluster with `ray job submit`.
#
#   cluster/submit.sh [options] [section.key=value ...]
#
#   --address URL       Ray dashboard address (default: $RAY_ADDRESS, else http://127.0.0.1:8265)
#   --config FILE       pipeline config (default: cluster/local.yaml)
#   --runtime-env FILE  runtime_env YAML (default: cluster/runtime_env.yaml)
#   --env KEY=VALUE     add or replace one env var of the runtime_env (repeatable),
#                       e.g. --env HF_HUB_OFFLINE=0 to let nodes download a hub backbone
#   --no-wait           return after submitting instead of following the logs
#   --dry-run           print the `ray job submit` command and exit
#   -h, --help          this text
# Anything else is a config override passed on to `pafo-ray run`, e.g. run.run_name=try2.
#
# Run it from anywhere inside the checkout: the repository root is uploaded as the job's
# working_dir. A cluster with token auth (Ray 2.60's default) needs the token in
# RAY_AUTH_TOKEN (KubeRay: the cluster's Secret, key auth_token) or ~/.ray/auth_token.
set -euo pipefail

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
address="${RAY_ADDRESS:-http://127.0.0.1:8265}"
config="cluster/local.yaml"
runtime_env="cluster/runtime_env.yaml"
wait_flag=()
dry_run=0
env_pairs=()
overrides=()

while [[ $# -gt 0 ]]; do
  case "$1" in
    --address) address="${2:?--address needs a URL}"; shift 2 ;;
    --address=*) address="${1#*=}"; shift ;;
    --config) config="${2:?--config needs a file}"; shift 2 ;;
    --config=*) config="${1#*=}"; shift ;;
    --runtime-env) runtime_env="${2:?--runtime-env needs a file}"; shift 2 ;;
    --runtime-env=*) runtime_env="${1#*=}"; shift ;;
    --env) env_pairs+=("${2:?--env needs KEY=VALUE}"); shift 2 ;;
    --env=*) env_pairs+=("${1#*=}"); shift ;;
    --no-wait) wait_flag=(--no-wait); shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; overrides+=("$@"); break ;;
    -*) echo "submit.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *=*) overrides+=("$1"); shift ;;
    *) echo "submit.sh: '$1' is neither an option nor a section.key=value override" >&2; exit 2 ;;
  esac
done

cd "$repo_root"
for f in "$config" "$runtime_env"; do
  [[ -f "$f" ]] || { echo "submit.sh: $f does not exist (paths are relative to $repo_root)" >&2; exit 2; }
done

# Bind the config here first: a typo fails now, not minutes later on the cluster; and it
# tells us where the run's results will land.
IFS=$'\t' read -r storage_path run_name < <(python - "$config" ${overrides[@]+"${overrides[@]}"} <<'PY'
import sys
from pafo_ray.config import ConfigError, load_config
try:
    cfg = load_config(sys.argv[1], sys.argv[2:])
except ConfigError as exc:
    sys.exit(f"submit.sh: {exc}")
print(cfg.run.storage_path, cfg.run.run_name, sep="\t")
PY
) || exit 2
[[ -n "${run_name:-}" ]] || { echo "submit.sh: could not read $config" >&2; exit 2; }

# The driver runs in the uploaded copy of the checkout (a temporary folder on the head), so
# a relative local storage_path would land there. On a cluster on this machine, pin it to
# the checkout; elsewhere only object storage (s3://, gs://) outlives the job.
if [[ "$storage_path" != *://* ]]; then
  case "$address" in
    *://127.0.0.1[:/]*|*://127.0.0.1|*://localhost[:/]*|*://localhost|127.0.0.1*|localhost*)
      if [[ "$storage_path" != /* ]]; then
        storage_path="$repo_root/${storage_path#./}"
        overrides+=("run.storage_path=$storage_path")
      fi ;;
    *) echo "submit.sh: warning: run.storage_path=$storage_path is a path on the cluster's" \
            "head node; use run.storage_path=s3://... or gs://... to keep the results." >&2 ;;
  esac
fi
results="${storage_path%/}/$run_name"

runtime_env_args=(--runtime-env "$runtime_env")
if [[ -n "${env_pairs[*]+set}" ]]; then
  runtime_env_json=$(python - "$runtime_env" "${env_pairs[@]}" <<'PY'
import json, sys
import yaml
with open(sys.argv[1]) as fh:
    env = yaml.safe_load(fh) or {}
for pair in sys.argv[2:]:
    key, sep, value = pair.partition("=")
    if not sep or not key:
        sys.exit(f"submit.sh: --env {pair!r} must look like KEY=VALUE")
    env.setdefault("env_vars", {})[key] = value
print(json.dumps(env))
PY
)
  runtime_env_args=(--runtime-env-json "$runtime_env_json")
fi

cmd=(ray job submit --address "$address" --working-dir . "${runtime_env_args[@]}"
     ${wait_flag[@]+"${wait_flag[@]}"} -- pafo-ray run --config "$config"
     ${overrides[@]+"${overrides[@]}"})

echo "results: $results/  (report.md, metrics.json, plots/; one folder per stage)"
if [[ $dry_run -eq 1 ]]; then
  printf '%q ' "${cmd[@]}"; echo
  exit 0
fi
"${cmd[@]}"
echo "results: $results/"
