#!/usr/bin/env bash
# The creator step, then the array of workers once it has succeeded.
set -euo pipefail
cd "$(dirname "$0")"
created=$(sbatch --parsable --export=ALL create.sbatch)
sbatch --dependency="afterok:${created}" --export=ALL worker.sbatch
