"""Test and benchmark rig: a throwaway PostgreSQL cluster with the worker
preloaded, the FreeScout simulator, and small helpers to drive both.

Everything here is real: initdb/pg_ctl from the installed PostgreSQL, the
extension as `make install` put it, the simulator as its own process on
127.0.0.1.  No part is faked.  Runs as an ordinary user (not root), since
PostgreSQL refuses to run as root.
"""

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

import psycopg

HERE = os.path.dirname(os.path.abspath(__file__))
SIEM_SCHEMA = os.path.join(HERE, "siem_schema.sql")
API_KEY = "d5008ed483982d9b79d908b1bc97761e"
WEBHOOK_SECRET = "94b2eb8ab4323a9ad12989f5aaa7c7d2"


def pg_bindir():
    return subprocess.check_output(["pg_config", "--bindir"], text=True).strip()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc, timeout=10):
    """SIGTERM, a grace period, then SIGKILL: how every helper process ends."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_until(predicate, timeout=10.0, interval=0.02, what="condition"):
    """Polls predicate() until it returns a truthy value, which is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Simulator:
    """The FreeScout simulator (test/freescout_sim.py) in its own process."""

    def __init__(self, workdir, latency_ms=0, webhook_url=None, webhook_format="real",
                 api_port=0, control_port=0):
        self.workdir = workdir
        self.port_file = os.path.join(workdir, f"sim-{os.getpid()}-{time.monotonic_ns()}.json")
        args = ["/usr/bin/python3", os.path.join(HERE, "freescout_sim.py"),
                "--port", str(api_port), "--control-port", str(control_port),
                "--port-file", self.port_file, "--latency-ms", str(latency_ms),
                "--webhook-format", webhook_format, "--quiet"]
        if webhook_url:
            args += ["--webhook-url", webhook_url]
        self.log = open(os.path.join(workdir, "sim.log"), "ab")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        ports = wait_until(self._read_ports, timeout=15, what="simulator start")
        self.api_port, self.control_port = ports["api"], ports["control"]
        self.url = f"http://127.0.0.1:{self.api_port}"

    def _read_ports(self):
        if self.proc.poll() is not None:
            raise RuntimeError("simulator exited during start; see sim.log")
        try:
            with open(self.port_file) as f:
                return json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def control(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.control_port}{path}",
                                     data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
            return json.loads(raw) if raw else None

    def stats(self):
        return self.control("GET", "/_sim/stats")

    def requests(self, since=0):
        return self.control("GET", f"/_sim/requests?since={since}")

    def conversation(self, conversation_id):
        return self.control("GET", f"/_sim/conversations/{conversation_id}")

    def webhooks(self, since=0):
        return self.control("GET", f"/_sim/webhooks?since={since}")

    def faults(self, *faults):
        return self.control("POST", "/_sim/faults", {"faults": list(faults)})

    def configure(self, **settings):
        return self.control("POST", "/_sim/config", settings)

    def act(self, conversation_id, action, **fields):
        return self.control("POST", "/_sim/act",
                            dict(conversation=conversation_id, action=action, **fields))

    def reset(self):
        return self.control("POST", "/_sim/reset", {})

    def stop(self):
        stop_process(self.proc)
        self.log.close()


class Cluster:
    """A temporary PostgreSQL cluster with freescout_bridge preloaded."""

    def __init__(self, workdir, name="pg", settings=None):
        self.bindir = pg_bindir()
        self.datadir = os.path.join(workdir, name)
        self.sockdir = tempfile.mkdtemp(prefix="fsb-sock-")
        self.port = free_port()
        self.logfile = os.path.join(workdir, f"{name}.log")
        self.dbname = "siem"
        self.settings = {
            "shared_preload_libraries": "'freescout_bridge'",
            "freescout.database": f"'{self.dbname}'",
            "freescout.allow_http": "on",
            "freescout.api_key": f"'{API_KEY}'",
            "freescout.webhook_secret": f"'{WEBHOOK_SECRET}'",
            "freescout.sync_interval": "0",
            "freescout.request_timeout": "5000",
            "fsync": "on",
            "log_min_messages": "warning",
            "max_wal_senders": "4",
            "wal_level": "replica",
        }
        self.settings.update(settings or {})

    # -- lifecycle -----------------------------------------------------------

    def initdb(self):
        subprocess.run([os.path.join(self.bindir, "initdb"), "-D", self.datadir, "-A", "trust",
                        "-U", "postgres", "--no-sync"], check=True, stdout=subprocess.DEVNULL)
        self.write_conf()
        return self

    def write_conf(self):
        with open(os.path.join(self.datadir, "postgresql.auto.conf"), "w") as f:
            f.write(f"port = {self.port}\nunix_socket_directories = '{self.sockdir}'\n"
                    "listen_addresses = ''\n")
            for key, value in self.settings.items():
                f.write(f"{key} = {value}\n")

    def set(self, **settings):
        """Changes settings (keys with '__' for '.') and reloads."""
        for key, value in settings.items():
            self.settings[key.replace("__", ".")] = value
        self.write_conf()
        self.pg_ctl("reload")

    def pg_ctl(self, *args):
        subprocess.run([os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir, "-l",
                        self.logfile, "-w", "-t", "60", *args], check=True,
                       stdout=subprocess.DEVNULL)

    def start(self):
        self.pg_ctl("start")
        return self

    def stop(self, mode="fast"):
        if self.postmaster_pid():
            self.pg_ctl("stop", "-m", mode)

    def postmaster_pid(self):
        try:
            with open(os.path.join(self.datadir, "postmaster.pid")) as f:
                pid = int(f.readline())
            os.kill(pid, 0)
            return pid
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return None

    def kill9_postmaster(self):
        """Crashes the whole server: postmaster and every backend."""
        pid = self.postmaster_pid()
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True,
                                  text=True).stdout.split()
        os.kill(pid, signal.SIGKILL)
        for child in children:
            try:
                os.kill(int(child), signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_until(lambda: not os.path.exists(os.path.join(self.sockdir, f".s.PGSQL.{self.port}"))
                   or not self.reachable(), timeout=10, what="server death")

    # -- SQL -----------------------------------------------------------------

    def connect(self, dbname=None, autocommit=True):
        return psycopg.connect(host=self.sockdir, port=self.port, user="postgres",
                               dbname=dbname or self.dbname, autocommit=autocommit)

    def sql(self, query, params=None, dbname=None):
        """Runs one statement and returns all rows (or None)."""
        with self.connect(dbname) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else None

    def scalar(self, query, params=None):
        rows = self.sql(query, params)
        return rows[0][0] if rows else None

    def create_siem(self, with_extension=True):
        self.sql(f"CREATE DATABASE {self.dbname}", dbname="postgres")
        with open(SIEM_SCHEMA) as f:
            self.sql(f.read())
        if with_extension:
            self.sql("CREATE EXTENSION freescout_bridge")
        return self

    def worker_pid(self):
        rows = self.sql("SELECT pid FROM pg_stat_activity "
                        "WHERE backend_type = 'freescout_bridge worker'", dbname="postgres")
        return rows[0][0] if rows else None

    def reachable(self):
        try:
            self.connect("postgres").close()
            return True
        except psycopg.OperationalError:
            return False

    def wait_for_worker(self, timeout=30):
        """The worker's pid, once the server accepts connections and it runs."""
        return wait_until(lambda: self.reachable() and self.worker_pid(), timeout=timeout,
                          what="freescout_bridge worker")

    def wait_queue_empty(self, timeout=60):
        """Waits until the outbox holds no pending or in-flight job."""
        return wait_until(lambda: self.scalar(
            "SELECT count(*) = 0 FROM freescout_outbox WHERE state <> 'dead'"),
            timeout=timeout, interval=0.05, what="empty outbox")


class Results:
    """Counts checks and prints the closing 'N passed, N failed' line."""

    def __init__(self, suite):
        self.suite = suite
        self.passed = 0
        self.failed = 0

    def check(self, name, condition, detail=""):
        if condition:
            self.passed += 1
            print(f"ok - {self.suite}: {name}", flush=True)
        else:
            self.failed += 1
            print(f"FAILED - {self.suite}: {name} {detail}", flush=True)
        return condition

    def finish(self):
        print(f"{self.suite}: {self.passed} passed, {self.failed} failed", flush=True)
        return 0 if self.failed == 0 else 1
