#!/usr/bin/env bash
# Set up .venv and run the main job: segment the bundled sample image (or the images given) and write
# masks, an overlay and a JSON of boxes/scores to ./out. Without --checkpoint a small random-weight model
# is used and the outputs say so; pass --checkpoint PATH_OR_HUB_ID for real weights.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
sam3lt segment --text "${SAM3LT_TEXT:-cat}" --out out "$@"
