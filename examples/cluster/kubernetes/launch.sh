#!/usr/bin/env bash
# The creator step, then the K workers once it has completed.
set -euo pipefail
cd "$(dirname "$0")"
kubectl apply -f create-job.yaml
kubectl wait --for=condition=complete job/tlsearch-create --timeout=60m
kubectl apply -f workers-job.yaml
