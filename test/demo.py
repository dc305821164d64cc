"""The demo behind `test/demo`: alerts become FreeScout conversations, and
what an analyst does in FreeScout comes back to the SIEM.

It starts a temporary PostgreSQL with the worker preloaded, the FreeScout
simulator (which signs and sends webhooks like the real module), and the
FastAPI reference app that receives them, then walks through the spec's
three scenarios, printing what happens on each side.
"""

import os
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Cluster, Simulator, free_port, stop_process, wait_until  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def step(text):
    print(f"\n== {text}", flush=True)


def show(cluster, query, params=None):
    with cluster.connect() as conn:
        cur = conn.execute(query, params)
        names = [d.name for d in cur.description]
        rows = cur.fetchall()
    widths = [max(len(str(n)), *(len(str(r[i])) for r in rows)) if rows else len(n)
              for i, n in enumerate(names)]
    print("  " + " | ".join(n.ljust(w) for n, w in zip(names, widths)))
    for row in rows:
        print("  " + " | ".join(str(v).ljust(w) for v, w in zip(row, widths)))


def post(url):
    req = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.read().decode()


def main():
    work = tempfile.mkdtemp(prefix="fsb-demo-")
    app_port = free_port()
    sim = Simulator(work, latency_ms=20,
                    webhook_url=f"http://127.0.0.1:{app_port}/api/v1/integrations/freescout/webhook")
    cluster = Cluster(work, settings={"freescout.url": f"'{sim.url}'",
                                      "freescout.custom_fields": "'alert_id:3,severity:4,computer:5,mitre_tactic:6'"})
    cluster.initdb().start().create_siem()
    app = subprocess.Popen(["/usr/bin/python3", "-m", "uvicorn", "siem_api.app:app",
                            "--host", "127.0.0.1", "--port", str(app_port), "--log-level", "warning"],
                           cwd=ROOT, env=dict(os.environ, SIEM_DSN=(
                               f"host={cluster.sockdir} port={cluster.port} dbname=siem user=postgres")))
    try:
        cluster.wait_for_worker()
        wait_until(lambda: _up(app_port), timeout=20, what="FastAPI app")
        print(f"PostgreSQL on port {cluster.port} with the freescout_bridge worker "
              f"(pid {cluster.worker_pid()}), FreeScout simulator at {sim.url}, "
              f"SIEM API at http://127.0.0.1:{app_port}")

        step("Scenario 1: the SIEM detects a brute force; high and critical alerts become tickets")
        cluster.sql("""INSERT INTO alerts (title, description, severity, computer, username, source_ip,
                                           event_count, mitre_attack_tactic, mitre_attack_technique)
                       VALUES ('Brute force against <DC-01>', '412 failed logons in 5 minutes', 4,
                               'DC-01', 'administrator', '203.0.113.7', 412, 'Credential Access', 'T1110'),
                              ('Port scan', 'noise', 2, 'FW-1', NULL, '198.51.100.4', 9000, 'Discovery', 'T1046')""")
        cluster.wait_queue_empty()
        show(cluster, """SELECT a.alert_id, a.severity, t.freescout_number AS ticket, t.ticket_url, t.status
                           FROM alerts a LEFT JOIN freescout_tickets t ON t.ticket_id = a.freescout_ticket_id
                          ORDER BY 1""")
        conversation = sim.conversation(cluster.scalar("SELECT freescout_id FROM freescout_tickets"))
        print(f"  FreeScout shows: \"{conversation['subject']}\", tags "
              f"{[t['name'] for t in conversation['_embedded'].get('tags', [])] or '(set by PUT)'}")

        step("An analyst assigns the ticket, writes a note and closes it in FreeScout")
        conv_id = conversation["id"]
        sim.act(conv_id, "assign", user=7)
        sim.act(conv_id, "note", user=7, text="Blocked 203.0.113.7 at the edge; <b>reset</b> the admin password.")
        sim.act(conv_id, "status", user=7, status="closed")
        wait_until(lambda: cluster.scalar("SELECT status FROM alerts WHERE alert_id = 1") == "resolved",
                   timeout=20, what="webhook applied")
        show(cluster, """SELECT a.alert_id, a.status, a.resolution, t.assignee_name
                           FROM alerts a JOIN freescout_tickets t ON t.alert_id = a.alert_id""")
        show(cluster, "SELECT direction, author, body FROM freescout_worklog")

        step("Scenario 2: the analyst presses \"Create ticket\" on the low-severity alert")
        print("  " + post(f"http://127.0.0.1:{app_port}/api/v1/alerts/2/ticket"))

        step("Scenario 3: an incident correlates three alerts; one ticket, status both ways")
        with cluster.connect() as conn:
            with conn.transaction():
                conn.execute("INSERT INTO incidents (title, severity, description) "
                             "VALUES ('Lateral movement from WS-17', 4, 'RDP then SMB exec')")
                conn.execute("INSERT INTO alerts (title, severity, incident_id) VALUES "
                             "('RDP from WS-17', 3, 1), ('SMB exec on SRV-2', 4, 1), ('New service', 2, 1)")
        cluster.wait_queue_empty()
        show(cluster, """SELECT a.alert_id, a.title, t.freescout_number AS ticket, t.incident_id
                           FROM alerts a JOIN freescout_tickets t ON t.ticket_id = a.freescout_ticket_id
                          WHERE a.incident_id = 1 ORDER BY 1""")
        cluster.sql("UPDATE incidents SET status = 'resolved' WHERE incident_id = 1")
        cluster.wait_queue_empty()
        incident_conv = sim.conversation(cluster.scalar(
            "SELECT freescout_id FROM freescout_tickets WHERE incident_id = 1"))
        print(f"  SIEM resolved the incident -> FreeScout conversation is now '{incident_conv['status']}'")

        step("What the bridge did (freescout_sync_log) and its counters")
        show(cluster, """SELECT direction, event_type, count(*), bool_and(success) AS all_ok,
                                round(avg(latency_ms)::numeric, 1) AS avg_ms
                           FROM freescout_sync_log GROUP BY 1, 2 ORDER BY 1, 2""")
        show(cluster, "SELECT * FROM freescout_metrics() WHERE value > 0")
        print(f"\nFreeScout simulator: {sim.stats()['conversations']} conversations, "
              f"duplicates: {sim.stats()['duplicates']}")
    finally:
        stop_process(app)
        cluster.stop()
        sim.stop()


def _up(port):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/docs", timeout=1).read()
        return True
    except OSError:
        return False


if __name__ == "__main__":
    main()
