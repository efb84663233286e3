#!/usr/bin/env python3
"""Drives the real Statsig Python SDK against fproxy's spec app (fproxy/tests/interop.rs).

  sdk_client.py --key K --api http://UPSTREAM/v1 (--http http://FPROXY | --grpc HOST:PORT)

1. initialise the SDK with download_config_specs going to fproxy (HTTP polling, or
   GRPC_WEBSOCKET streaming); everything else (get_id_lists) goes to --api;
2. check_gate("always_on_gate") must be True; print GATE_ON;
3. wait for a line on stdin (the test has turned the gate off upstream);
4. poll check_gate until it is False; print SEEN_OFF <ms>; exit 0.
Any other outcome prints FAIL <why> and exits 1. Non-loopback DNS lookups are
refused (and reported), so nothing reaches the internet.
"""
import argparse
import socket
import sys
import time

_real_getaddrinfo = socket.getaddrinfo
BLOCKED = []


def _guarded(host, *args, **kw):
    h = host.decode() if isinstance(host, bytes) else str(host)
    if h not in ("127.0.0.1", "localhost", "::1"):
        BLOCKED.append(h)
        raise socket.gaierror(socket.EAI_NONAME, f"offline guard: {h} blocked")
    return _real_getaddrinfo(host, *args, **kw)


socket.getaddrinfo = _guarded

from statsig import statsig, StatsigOptions, StatsigUser  # noqa: E402
from statsig.evaluation_details import DataSource  # noqa: E402
from statsig.interface_network import NetworkEndpoint, NetworkProtocol  # noqa: E402
from statsig.statsig_options import ProxyConfig  # noqa: E402


def fail(why):
    print(f"FAIL {why} (blocked lookups: {BLOCKED})", flush=True)
    sys.exit(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--key", required=True)
    ap.add_argument("--api", required=True)
    ap.add_argument("--http")
    ap.add_argument("--grpc")
    ap.add_argument("--sync", type=float, default=0.2)
    ap.add_argument("--flip-timeout", type=float, default=20.0)
    a = ap.parse_args()

    if a.grpc:
        # Short retries; never fall back to the Statsig CDN in a test.
        dcs = ProxyConfig(NetworkProtocol.GRPC_WEBSOCKET, a.grpc, retry_backoff_base_ms=200,
                          retry_backoff_multiplier=2, push_worker_failover_threshold=1000)
    else:
        dcs = ProxyConfig(NetworkProtocol.HTTP, a.http)  # the SDK appends /v1
    opts = StatsigOptions(
        api=a.api,
        proxy_configs={NetworkEndpoint.DOWNLOAD_CONFIG_SPECS: dcs},
        rulesets_sync_interval=a.sync,
        idlists_sync_interval=3600,
        init_timeout=5,
        timeout=5,
        disable_all_logging=True,
        disable_diagnostics=True,
    )
    det = statsig.initialize(a.key, opts)
    if not (det.store_populated and det.source == DataSource.NETWORK):
        fail(f"init: store_populated={det.store_populated} source={det.source} error={det.error!r}")
    user = StatsigUser(user_id="user-1")
    if statsig.check_gate(user, "always_on_gate") is not True:
        fail("gate not on after init")
    print("GATE_ON", flush=True)

    if not sys.stdin.readline():
        fail("stdin closed before the flip")
    t = time.time()
    while time.time() - t < a.flip_timeout:
        if statsig.check_gate(user, "always_on_gate") is False:
            print(f"SEEN_OFF {1000 * (time.time() - t):.0f}", flush=True)
            statsig.shutdown()
            sys.exit(0)
        time.sleep(0.02)
    fail(f"gate still on {a.flip_timeout}s after the flip")


if __name__ == "__main__":
    main()
