#!/bin/sh
# fair-edge Jetson container entrypoint: a TensorRT engine for this GPU (built on the first start, then cached by
# bundle hash + GPU + TensorRT version in $FAIR_EDGE_ENGINE_CACHE), then the station.
#   (no arguments, or options)  fair-edge run --station $FAIR_EDGE_STATION --bundle DEVICE_BUNDLE --backend ... OPTIONS
#   any other command           run it instead (e.g. `bash`, `fair-edge bench /bundle`)
set -eu

case "${1:-}" in
    "" | -*) ;;
    *) exec "$@" ;;
esac

bundle="${FAIR_EDGE_BUNDLE:-/bundle}"
cache="${FAIR_EDGE_ENGINE_CACHE:-/var/cache/fair-edge}"
station="${FAIR_EDGE_STATION:-/config/station.yaml}"
backend="${FAIR_EDGE_BACKEND:-tensorrt}"

if [ ! -f "$station" ]; then
    echo "error: no station file at $station; mount one (-v /opt/fair-edge/config:/config) or set FAIR_EDGE_STATION." >&2
    exit 2
fi

# prints the device bundle's path on stdout; its messages (and the build's progress) go to stderr
device_bundle="$(python3 -m fair_edge.export.engine_cache --bundle "$bundle" --cache "$cache")" || exit $?

exec fair-edge run --station "$station" --bundle "$device_bundle" --backend "$backend" "$@"
