"""
Black-box test support: start the real rhemad on a loopback port, talk to it
over HTTP, stop it.  Standard library only (plus pytest; python3-yaml and
python3-jsonschema for the OpenAPI check of every request, openapi_check.py).

Environment (set by the automake harness; defaults suit a run from the tree):
  top_builddir       where rhemad was built (default: the repository root)
  top_srcdir         the source tree (default: the repository root)
  RHEMA_PLUGIN_DIR   the plugins (default: $top_builddir/plugins/.libs)
  RHEMA_TAP_FILE     when set, a TAP report of the run is written there
"""

import http.client
import json as jsonlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

import openapi_check

REPO = Path(__file__).resolve().parents[2]
TOP_BUILDDIR = Path(os.environ.get("top_builddir") or REPO)
TOP_SRCDIR = Path(os.environ.get("top_srcdir") or REPO)
RHEMAD = TOP_BUILDDIR / "rhemad"
PLUGIN_DIR = Path(os.environ.get("RHEMA_PLUGIN_DIR") or TOP_BUILDDIR / "plugins" / ".libs")

START_TIMEOUT = 10.0
HTTP_TIMEOUT = 10.0


def plugin_available(name):
    """True when the storage plugin `name` was built."""
    return (PLUGIN_DIR / f"storage_{name}.so").exists()


def require_plugin(name):
    if not plugin_available(name):
        pytest.skip(f"storage plugin '{name}' not built ({PLUGIN_DIR})")


def free_port():
    """A loopback port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid):
    """The resident set of process pid, in KiB (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def pid_alive(pid):
    """True when pid exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_until(pred, timeout, step=0.02):
    """Poll pred() until true or timeout; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(step)


def memory_config():
    return 'persistence: { backend = "memory"; };\n'


def sqlite_config(db_path):
    return ('persistence: {\n  backend = "sqlite";\n'
            f'  sqlite = {{ path = "{db_path}"; }};\n}};\n')


class Response:
    """status, headers (case-insensitive get), body bytes; unpacks as a 3-tuple."""

    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def __iter__(self):
        return iter((self.status, self.headers, self.body))

    def json(self):
        return jsonlib.loads(self.body) if self.body else None


class Daemon:
    """
    One rhemad process in the foreground (-f), on 127.0.0.1 and a free port,
    logging (stdout and stderr) into a file in the test's tmp_path.

    config:    the configuration file's text (default: the memory backend)
    overrides: extra "-o section.key=value" settings
    workers:   service.workers passed with -o (None: leave it to the file)
    args:      extra command-line arguments
    """

    def __init__(self, tmp_path, name="rhemad", config=None, overrides=(), workers=2,
                 args=(), port=None, cwd=None):
        self.tmp_path = Path(tmp_path)
        self.name = name
        self.conf = self.tmp_path / f"{name}.conf"
        self.logfile = self.tmp_path / f"{name}.log"
        self.overrides = list(overrides)
        self.workers = workers
        self.args = list(args)
        self.fixed_port = port
        self.port = port
        self.cwd = cwd or self.tmp_path
        self.proc = None
        self.write_config(config if config is not None else memory_config())

    def write_config(self, text):
        tmp = self.conf.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.conf)

    def command(self):
        cmd = [str(RHEMAD), "-f", "-c", str(self.conf), "-P", str(PLUGIN_DIR),
               "-o", f"service.listen=127.0.0.1:{self.port}"]
        if self.workers is not None:
            cmd += ["-o", f"service.workers={self.workers}"]
        if not any(o.startswith("service.data_directory=") for o in self.overrides) \
                and "data_directory" not in self.conf.read_text():
            # relative paths in the file are relative to the data directory; here the
            # test's own directory, never the installed default ($localstatedir/lib/rhema)
            cmd += ["-o", f"service.data_directory={self.cwd}"]
        for o in self.overrides:
            cmd += ["-o", o]
        return cmd + self.args

    def spawn(self):
        """Start the process without waiting for it to answer."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        if self.fixed_port is None:
            self.port = free_port()
        log = open(self.logfile, "ab")
        try:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=str(self.cwd))
        finally:
            log.close()
        return self.proc

    def start(self, timeout=START_TIMEOUT):
        """Start and wait until GET /health/live answers 200."""
        for attempt in range(3):
            mark = self.log_size()
            self.spawn()
            if self.wait_ready(timeout, must=False):
                return self
            rc = self.proc.poll()
            if (rc is not None and self.fixed_port is None and attempt < 2
                    and "in use" in self.log()[mark:]):
                continue  # lost a race for the port: pick another
            self.kill()
            raise AssertionError(f"rhemad did not become ready (exit {rc}); log:\n{self.log()}")
        return self

    def wait_ready(self, timeout=START_TIMEOUT, must=True):
        def ready():
            if self.proc.poll() is not None:
                return "exited"
            try:
                return self.request("GET", "/health/live", timeout=1).status == 200
            except OSError:
                return False
        ok = wait_until(ready, timeout, 0.02) is True
        if must and not ok:
            raise AssertionError(f"rhemad not ready; log:\n{self.log()}")
        return ok

    # ---- HTTP ----

    def connection(self, timeout=HTTP_TIMEOUT):
        """A keep-alive connection (the caller closes it)."""
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, conn=None, timeout=HTTP_TIMEOUT):
        """
        One request; a dict/list body is sent as JSON.  Uses `conn` when given
        (kept open), else a fresh connection.  Returns a Response.
        """
        if isinstance(body, (dict, list)):
            body = jsonlib.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        headers = dict(headers or {})
        if body is not None and "Content-Type" not in headers:
            headers["Content-Type"] = "application/json"
        own = conn is None
        c = conn or self.connection(timeout)
        try:
            c.request(method, path, body=body, headers=headers)
            r = c.getresponse()
            data = r.read()
            # the exchange against doc/openapi.yaml (openapi_check.py)
            openapi_check.check(method, path, headers, body, r.status, r.headers, data)
            return Response(r.status, r.headers, data)
        finally:
            if own:
                c.close()

    def json(self, method, path, body=None, headers=None, conn=None):
        """Like request(), with the body parsed: (status, headers, json or None)."""
        r = self.request(method, path, body, headers, conn)
        try:
            parsed = r.json()
        except ValueError:
            raise AssertionError(f"{method} {path}: not JSON ({r.status}): {r.body[:300]!r}")
        return r.status, r.headers, parsed

    # ---- process ----

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def send(self, sig):
        """Send a signal to the process."""
        self.proc.send_signal(sig)

    def wait(self, timeout=10):
        """Exit code, or None when still running after timeout."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, sig=signal.SIGTERM, timeout=10):
        """Send sig and wait; returns the exit code (kills and fails on timeout)."""
        if not self.running():
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"rhemad did not exit within {timeout}s of signal {sig}")

    def kill(self):
        if self.running():
            self.proc.kill()
        if self.proc is not None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        return self.proc.returncode if self.proc else None

    def log(self):
        try:
            return self.logfile.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_size(self):
        return len(self.log())

    def wait_log(self, text, since=0, timeout=5):
        """Wait until `text` appears in the log after offset `since`."""
        return wait_until(lambda: text in self.log()[since:], timeout)


@pytest.fixture
def daemons(tmp_path):
    """A factory of Daemon objects; every one left running is killed at teardown."""
    made = []
    extra_pids = []

    def make(name="rhemad", **kw):
        d = Daemon(tmp_path, name=name, **kw)
        made.append(d)
        return d

    make.pids = extra_pids  # daemon-mode pids a test wants cleaned up
    yield make
    for d in made:
        d.kill()
    for pid in extra_pids:
        if pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture
def daemon(daemons):
    """A started rhemad on the memory backend."""
    return daemons().start()


def _redis_server():
    return shutil.which("redis-server")


@pytest.fixture
def redis(tmp_path):
    """A redis-server on a free loopback port with a password (skipped when absent)."""
    exe = _redis_server()
    if not exe or not plugin_available("redis"):
        pytest.skip("redis-server or the redis plugin is not available")
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--requirepass", "s3cret pass",
                             "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def up():
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return True
        except OSError:
            return False
    try:
        assert wait_until(up, 10) is True, "redis-server did not start"
        yield proc, port
    finally:
        proc.kill()
        proc.wait(10)


def run_rhemad(args, timeout=15, cwd=None):
    """Run rhemad with args to completion; returns CompletedProcess (text).

    Unless args set service.data_directory, it is the working directory (cwd):
    a test's files never land in the installed default."""
    args = list(args)
    if "-t" not in args and not any(str(a).startswith("service.data_directory=") for a in args):
        args = ["-o", f"service.data_directory={cwd or os.getcwd()}"] + args
    return subprocess.run([str(RHEMAD)] + args, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)


def pytest_configure(config):
    if not RHEMAD.exists():
        raise pytest.UsageError(f"{RHEMAD} not found: build it first (make rhemad) "
                                "or set top_builddir")


# ---- TAP report (RHEMA_TAP_FILE) ----

_tap = {}     # nodeid -> [ok, directive, note]
_order = []


def _tap_entry(nodeid):
    if nodeid not in _tap:
        _tap[nodeid] = [True, "", ""]
        _order.append(nodeid)
    return _tap[nodeid]


def _first_line(longrepr):
    text = str(longrepr or "").strip().splitlines()
    for line in reversed(text):
        if line.startswith("E "):
            return line[1:].strip()
    return text[-1] if text else ""


def pytest_runtest_logreport(report):
    e = _tap_entry(report.nodeid)
    xfail = getattr(report, "wasxfail", None)
    if report.failed:
        e[0] = False
        if not e[2]:
            e[2] = (f"{report.when}: " if report.when != "call" else "") + \
                _first_line(report.longrepr)
    elif report.skipped:
        if xfail is not None:
            e[0], e[1] = False, f"TODO {xfail}".strip()
        elif e[0] and not e[1]:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
            reason = reason[len("Skipped: "):] if reason.startswith("Skipped: ") else reason
            e[1] = f"SKIP {reason}".strip()
    elif report.passed and report.when == "call" and xfail is not None:
        e[1] = f"TODO xpass {xfail}".strip()


def pytest_collectreport(report):
    if report.failed:
        e = _tap_entry(f"collect {report.nodeid or 'session'}")
        e[0], e[2] = False, _first_line(report.longrepr)


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("RHEMA_TAP_FILE")
    if not path:
        return
    lines = []
    for n, nodeid in enumerate(_order, 1):
        ok, directive, note = _tap[nodeid]
        name = nodeid.replace("#", "")
        line = f"{'ok' if ok else 'not ok'} {n} - {name}"
        if directive:
            line += f" # {directive.replace(chr(10), ' ')}"
        lines.append(line)
        if not ok and note:
            lines.append(f"# {note}")
    lines.append(f"1..{len(_order)}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


@pytest.fixture
def fake_openai():
    """A factory of fake OpenAI upstreams (fake_openai.py) on free loopback ports; stopped at teardown."""
    from fake_openai import FakeOpenAI
    made = []

    def make(name="fake"):
        f = FakeOpenAI(name)
        made.append(f)
        return f

    yield make
    for f in made:
        f.stop()
