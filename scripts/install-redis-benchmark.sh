#!/usr/bin/env bash
# Installs the cache benchmark's client, redis-benchmark from Debian's redis-tools
# (`dotnet run -c Release --project bench -- cache`). Idempotent; without root, sudo or apt-get it says so and exits 0
# (see install-debian-tool.sh).
exec bash "$(dirname "$0")/install-debian-tool.sh" redis-tools redis-benchmark cache
