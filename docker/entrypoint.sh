#!/bin/sh
# Entry point of every cpusweep container: make sure the Ray authentication token exists, then
# run the command. With RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH on the shared volume (as
# docker/compose.yaml sets them), the head writes a fresh random token there once, and workers
# wait for it: every node and every driver started in these containers then presents it.
set -eu

if [ "${RAY_AUTH_MODE:-}" = "token" ] && [ -z "${RAY_AUTH_TOKEN:-}" ] \
    && [ -n "${RAY_AUTH_TOKEN_PATH:-}" ]; then
    if [ "${CPUSWEEP_ROLE:-}" = "head" ] && [ ! -s "$RAY_AUTH_TOKEN_PATH" ]; then
        mkdir -p "$(dirname "$RAY_AUTH_TOKEN_PATH")"
        (
            umask 077
            python -c "import secrets; print(secrets.token_hex(32), end='')" \
                > "$RAY_AUTH_TOKEN_PATH.tmp"
        )
        mv "$RAY_AUTH_TOKEN_PATH.tmp" "$RAY_AUTH_TOKEN_PATH"
    fi
    waited=0
    while [ ! -s "$RAY_AUTH_TOKEN_PATH" ]; do
        if [ "$waited" -ge 120 ]; then
            echo "cpusweep: no Ray token at $RAY_AUTH_TOKEN_PATH after 120 s; is the head up?" >&2
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
fi

exec "$@"
