#!/usr/bin/env bash
# Installs the web benchmark's load generator, Debian's wrk (`dotnet run -c Release --project bench -- web`).
# Idempotent; without root, sudo or apt-get it says so and exits 0 (see install-debian-tool.sh).
exec bash "$(dirname "$0")/install-debian-tool.sh" wrk wrk web
