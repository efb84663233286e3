#!/usr/bin/env python3
"""Drive the real `statsig` Python SDK (pinned 0.72.1) against fake_server.py.

  python client.py --http http://127.0.0.1:PORT                 # HTTP polling path
  python client.py --http http://127.0.0.1:PORT --grpc 127.0.0.1:GPORT   # GRPC_WEBSOCKET path
  --no-api     : do NOT point `api` at the fake (shows what leaks to statsig hosts)
  --logging    : do NOT set disable_all_logging (shows log_event / sdk_exception traffic)

Steps: initialize -> check_gate(always_on_gate) must be True -> ask the fake to set
enabled=false (lcut += 1000) -> poll check_gate until False -> shutdown.
An offline guard wraps socket.getaddrinfo: any non-loopback host lookup is recorded
and refused at once (so nothing waits on DNS / internet timeouts).
Exit code 0 only if both gate values were seen as expected.
"""
import argparse
import json
import socket
import sys
import time
import urllib.request

# ---- offline guard (Python-level sockets only: requests/urllib3; gRPC core uses its own resolver)
_real_getaddrinfo = socket.getaddrinfo
BLOCKED = []


def _guarded_getaddrinfo(host, *args, **kw):
    h = host.decode() if isinstance(host, bytes) else str(host)
    if h not in ("127.0.0.1", "localhost", "::1"):
        BLOCKED.append((round(time.time() - T0, 3), h))
        raise socket.gaierror(socket.EAI_NONAME, f"offline guard: {h} blocked")
    return _real_getaddrinfo(host, *args, **kw)


socket.getaddrinfo = _guarded_getaddrinfo
T0 = time.time()

from statsig import statsig, StatsigOptions, StatsigUser  # noqa: E402
from statsig.statsig_options import ProxyConfig  # noqa: E402
from statsig.interface_network import NetworkProtocol, NetworkEndpoint  # noqa: E402
from statsig.evaluation_details import DataSource  # noqa: E402


def ts():
    return f"[{time.time() - T0:7.3f}s]"


def control(base, query):
    with urllib.request.urlopen(f"{base}/__control/set?{query}", data=b"") as r:
        return json.loads(r.read())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--http", required=True, help="fake server base URL, e.g. http://127.0.0.1:8080")
    ap.add_argument("--grpc", default=None, help="HOST:PORT -> use NetworkProtocol.GRPC_WEBSOCKET for DCS")
    ap.add_argument("--key", default="secret-test-key")
    ap.add_argument("--sync", type=float, default=0.5, help="rulesets_sync_interval (s)")
    ap.add_argument("--no-api", action="store_true")
    ap.add_argument("--logging", action="store_true")
    ap.add_argument("--flip-timeout", type=float, default=15.0)
    ap.add_argument("--plain-grpc", action="store_true", help="use NetworkProtocol.GRPC instead of GRPC_WEBSOCKET")
    ap.add_argument("--wait-ready", type=float, default=0.0,
                    help="if the first check_gate is not True, keep polling it for N s (late server start)")
    ap.add_argument("--hold", type=float, default=0.0, help="after the flip, keep calling check_gate for N s")
    a = ap.parse_args()

    if a.grpc:
        dcs_proxy = ProxyConfig(NetworkProtocol.GRPC if a.plain_grpc else NetworkProtocol.GRPC_WEBSOCKET, a.grpc,
                                retry_backoff_base_ms=500, retry_backoff_multiplier=2)
    else:
        dcs_proxy = ProxyConfig(NetworkProtocol.HTTP, a.http)  # no trailing slash! SDK appends "/v1"

    opts = StatsigOptions(
        api=None if a.no_api else f"{a.http}/v1",  # get_id_lists + log_event go here
        proxy_configs={NetworkEndpoint.DOWNLOAD_CONFIG_SPECS: dcs_proxy},
        rulesets_sync_interval=a.sync,     # HTTP poll period (s); also the gRPC fallback poll period
        idlists_sync_interval=3600,        # keep id-list polling out of the way
        init_timeout=3,                    # per-request timeout during initialize (s)
        timeout=3,                         # per-request timeout afterwards (s)
        disable_all_logging=not a.logging, # no log_event flushes, no sdk_exception posts
        disable_diagnostics=True,
    )

    print(f"{ts()} initialize(mode={dcs_proxy.protocol.name})", flush=True)
    t = time.time()
    det = statsig.initialize(a.key, opts)
    init_s = time.time() - t
    src = det.source.value if hasattr(det.source, "value") else det.source
    print(f"{ts()} initialize took {init_s*1000:.0f} ms: init_success={det.init_success} "
          f"store_populated={det.store_populated} source={src} source_api={det.init_source_api} "
          f"error={det.error!r} timed_out={det.timed_out}", flush=True)
    init_ok = det.store_populated and det.source == DataSource.NETWORK

    user = StatsigUser(user_id="user-1")
    v1 = statsig.check_gate(user, "always_on_gate")
    print(f"{ts()} check_gate(always_on_gate) = {v1}", flush=True)
    if v1 is not True and a.wait_ready:
        t_w = time.time()
        while v1 is not True and time.time() - t_w < a.wait_ready:
            time.sleep(0.05)
            v1 = statsig.check_gate(user, "always_on_gate")
        init_ok = v1 is True
        print(f"{ts()} check_gate(always_on_gate) = {v1} after waiting {1000*(time.time()-t_w):.0f} ms",
              flush=True)

    flip = control(a.http, "enabled=false")
    t_flip = time.time()
    print(f"{ts()} fake server flipped: {flip}", flush=True)
    v2 = None
    while time.time() - t_flip < a.flip_timeout:
        v2 = statsig.check_gate(user, "always_on_gate")
        if v2 is False:
            break
        time.sleep(0.02)
    print(f"{ts()} check_gate after flip = {v2} (seen {1000*(time.time()-t_flip):.0f} ms after flip)",
          flush=True)

    t_hold = time.time()
    while time.time() - t_hold < a.hold:
        time.sleep(0.5)
        statsig.check_gate(user, "always_on_gate")
    t = time.time()
    statsig.shutdown()
    print(f"{ts()} shutdown took {1000*(time.time()-t):.0f} ms", flush=True)
    print(f"{ts()} offline guard blocked lookups: {BLOCKED}", flush=True)
    ok = init_ok and v1 is True and v2 is False
    print("RESULT", "PASS" if ok else "FAIL", flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
