"""Worker behaviour that pg_regress cannot express: the extension created
after the server started and dropped again, NOTIFY payloads, the commit wake,
reloads, and a crash between FreeScout's commit and ours.

Runs as an ordinary user against a temporary cluster and the simulator.
"""

import http.server
import json
import os
import select
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Cluster, Results, Simulator, wait_until  # noqa: E402


def ticket_count(cluster, alert_id):
    return cluster.scalar("SELECT count(*) FROM freescout_tickets WHERE alert_id = %s", (alert_id,))


def extension_lifecycle(cluster, sim, results):
    """CREATE EXTENSION after start, DROP, and CREATE again, with no restart."""
    cluster.create_siem(with_extension=False)
    pid = cluster.wait_for_worker()
    results.check("worker runs before the extension exists", pid is not None)
    results.check("worker shows in pg_stat_activity as 'freescout_bridge worker'",
                  cluster.sql("SELECT application_name FROM pg_stat_activity WHERE pid = %s",
                              (pid,), dbname="postgres")[0][0] == "freescout_bridge worker")

    cluster.sql("CREATE EXTENSION freescout_bridge")
    cluster.sql("INSERT INTO alerts (alert_id, title, severity) VALUES (1, 'after create', 4)")
    results.check("extension created after server start is noticed",
                  wait_until(lambda: ticket_count(cluster, 1) == 1, timeout=10,
                             what="ticket after CREATE EXTENSION"))

    cluster.sql("DROP EXTENSION freescout_bridge")
    time.sleep(1.5)
    results.check("worker survives DROP EXTENSION (same pid)", cluster.worker_pid() == pid)
    results.check("DROP EXTENSION keeps the SIEM's alerts",
                  cluster.scalar("SELECT count(*) FROM alerts") == 1)

    cluster.sql("CREATE EXTENSION freescout_bridge")
    cluster.sql("INSERT INTO alerts (alert_id, title, severity) VALUES (2, 'after re-create', 4)")
    results.check("re-created extension is served again without a restart",
                  wait_until(lambda: ticket_count(cluster, 2) == 1, timeout=10,
                             what="ticket after re-create"))
    results.check("worker kept running throughout", cluster.worker_pid() == pid)


def notify_payload(cluster, results):
    """A UI can LISTEN freescout_ticket and refresh when a ticket appears."""
    payloads = []
    with cluster.connect() as listener:
        listener.add_notify_handler(lambda n: payloads.append(n.payload))
        listener.execute("LISTEN freescout_ticket")
        cluster.sql("INSERT INTO alerts (alert_id, title, severity) VALUES (3, 'notify me', 4)")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not payloads:
            select.select([listener.fileno()], [], [], 0.2)
            listener.execute("SELECT 1")   # delivers what arrived to the handler
    payload = json.loads(payloads[0]) if payloads else {}
    results.check("NOTIFY freescout_ticket arrives with a JSON payload",
                  payload.get("alert_id") == 3 and payload.get("number", 0) > 0
                  and "/conversation/" in payload.get("url", ""), str(payloads))


def commit_wake(cluster, sim, results):
    """The commit wakes the worker: the request arrives in milliseconds."""
    delays = []
    for i in range(20):
        since = max((r["seq"] for r in sim.requests()), default=0)
        with cluster.connect() as conn:
            conn.execute("INSERT INTO alerts (alert_id, title, severity) VALUES (%s, 'wake', 4)",
                         (100 + i,))
            committed = time.time()
        arrived = wait_until(lambda: [r for r in sim.requests(since)
                                      if r["method"] == "POST" and r["path"] == "/api/conversations"],
                             timeout=5, interval=0.002, what="create request")
        delays.append((arrived[0]["t"] - committed) * 1000)
        time.sleep(0.05)
    delays.sort()
    results.check(f"commit-to-request median {delays[len(delays) // 2]:.1f} ms (< 100 ms: no polling)",
                  delays[len(delays) // 2] < 100)
    rolled_back_before = len(sim.requests())
    with cluster.connect(autocommit=False) as conn:
        conn.execute("INSERT INTO alerts (alert_id, title, severity) VALUES (199, 'rolled back', 4)")
        conn.rollback()
    time.sleep(0.5)
    results.check("a rolled-back insert sends nothing", len(sim.requests()) == rolled_back_before)


def reload_applies(cluster, sim, results):
    """SIGHUP applies new settings: a new threshold takes effect at once."""
    cluster.set(freescout__auto_create_severity_min="4")
    time.sleep(0.3)
    cluster.sql("INSERT INTO alerts (alert_id, title, severity) VALUES (200, 'high, below new threshold', 3)")
    time.sleep(0.5)
    results.check("reloaded threshold applies to the insert path", ticket_count(cluster, 200) == 0)
    cluster.set(freescout__auto_create_severity_min="3")


def crash_between_commits(cluster, sim, results):
    """kill -9 of the worker while FreeScout has committed but we have not."""
    sim.configure(latency_ms=1500)
    cluster.sql("INSERT INTO alerts (alert_id, title, severity) VALUES (300, 'crash mid-flight', 4)")
    wait_until(lambda: any(r["path"] == "/api/conversations" and r["method"] == "POST"
                           for r in sim.control("GET", "/_sim/requests?since=0")[-5:])
               or sim.stats()["inflight"] > 0, timeout=5, what="request in flight")
    time.sleep(0.2)
    os.kill(cluster.worker_pid(), signal.SIGKILL)   # the postmaster restarts everything
    sim.configure(latency_ms=0)
    time.sleep(0.5)   # let the postmaster notice and begin crash recovery
    cluster.wait_for_worker()
    results.check("after kill -9 mid-request the alert has exactly one ticket",
                  wait_until(lambda: ticket_count(cluster, 300) == 1, timeout=20,
                             what="ticket after crash"))
    markers = sim.stats()["markers"]
    results.check("and exactly one conversation in FreeScout", markers.get("alert:300") == 1,
                  str(markers.get("alert:300")))
    adopted = cluster.scalar("SELECT count(*) FROM freescout_sync_log WHERE alert_id = 300 "
                             "AND event_type = 'lookup'")
    results.check("the retry looked before creating", adopted >= 1)


def periodic_sync(cluster, sim, results):
    """A webhook that never arrives is repaired by the periodic reconciliation."""
    conv = cluster.scalar("SELECT freescout_id FROM freescout_tickets WHERE alert_id = 3")
    sim.act(conv, "status", status="closed", user=7)      # no webhook URL: it is lost
    cluster.set(freescout__sync_interval="1")
    results.check("periodic sync (sync_interval) repairs a lost webhook",
                  wait_until(lambda: cluster.scalar("SELECT status FROM alerts WHERE alert_id = 3")
                             == "resolved", timeout=15, what="periodic sync"))
    cluster.set(freescout__sync_interval="0")


def tls_is_verified(cluster, work, results):
    """An https FreeScout with a certificate we cannot verify gets nothing."""
    key, cert = os.path.join(work, "key.pem"), os.path.join(work, "cert.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1"],
                   check=True, capture_output=True)
    received = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(self.path)
            self.send_response(500)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    previous_url = cluster.settings["freescout.url"]
    try:
        cluster.set(freescout__url=f"'https://127.0.0.1:{server.server_port}'",
                    freescout__allow_http="off")
        time.sleep(0.3)
        cluster.sql("INSERT INTO alerts (alert_id, title, severity) VALUES (400, 'self-signed peer', 4)")
        error = wait_until(lambda: cluster.scalar(
            "SELECT error_message FROM freescout_sync_log WHERE alert_id = 400 AND NOT success"),
            timeout=10, what="TLS failure logged")
        results.check("a certificate that does not verify is refused", "certificate" in error.lower()
                      or "ssl" in error.lower(), error)
        results.check("and no request reached the unverified peer", received == [])
    finally:
        cluster.set(freescout__url=previous_url, freescout__allow_http="on")
        server.shutdown()
    results.check("the alert goes out once FreeScout is trusted again",
                  wait_until(lambda: ticket_count(cluster, 400) == 1, timeout=40,
                             what="delivery after TLS fix"))


def main():
    results = Results("worker")
    work = tempfile.mkdtemp(prefix="fsb-worker-")
    sim = Simulator(work)
    cluster = Cluster(work, settings={"freescout.url": f"'{sim.url}'"}).initdb().start()
    try:
        extension_lifecycle(cluster, sim, results)
        notify_payload(cluster, results)
        commit_wake(cluster, sim, results)
        reload_applies(cluster, sim, results)
        periodic_sync(cluster, sim, results)
        tls_is_verified(cluster, work, results)
        crash_between_commits(cluster, sim, results)
        results.check("no duplicate conversation anywhere", sim.stats()["duplicates"] == [],
                      str(sim.stats()["duplicates"]))
    finally:
        cluster.stop("immediate")
        sim.stop()
    return results.finish()


if __name__ == "__main__":
    sys.exit(main())
