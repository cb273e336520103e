"""
Fault-injection test support: real PostgreSQL and Redis servers that a test
can stop, crash and restart under traffic, plus the black-box helpers of
tests/integration/conftest.py (the Daemon class, the TAP report), which are
loaded from there rather than copied.

Servers listen on free loopback ports and keep their data in the test's
tmp_path; a stopped server restarts on the SAME data directory and port.
Every server a fixture started is stopped at teardown (immediately, so a
failing test never leaves one behind).

Environment: as tests/integration (top_builddir, RHEMA_PLUGIN_DIR,
RHEMA_TAP_FILE), plus RHEMA_CRASH_CYCLES (tests/fault/test_crash_safety.py).
"""

import glob
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
_INTEGRATION = _HERE.parent / "integration"

# tests/integration/conftest.py under a name of its own: "conftest" is this
# module (pytest imports every conftest.py as "conftest").
sys.path.insert(0, str(_INTEGRATION))
_spec = importlib.util.spec_from_file_location("rhema_integration_conftest",
                                               _INTEGRATION / "conftest.py")
itest = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = itest
_spec.loader.exec_module(itest)

# Black-box helpers, for the tests of this directory.
Daemon = itest.Daemon
Response = itest.Response
free_port = itest.free_port
wait_until = itest.wait_until
plugin_available = itest.plugin_available
require_plugin = itest.require_plugin
sqlite_config = itest.sqlite_config
memory_config = itest.memory_config
PLUGIN_DIR = itest.PLUGIN_DIR
RHEMAD = itest.RHEMAD

# Hooks and fixtures re-exported so that pytest registers them for this
# directory: the TAP report (RHEMA_TAP_FILE), the rhemad check, `daemons`.
pytest_configure = itest.pytest_configure
pytest_runtest_logreport = itest.pytest_runtest_logreport
pytest_collectreport = itest.pytest_collectreport
pytest_sessionfinish = itest.pytest_sessionfinish
daemons = itest.daemons

SERVER_START_TIMEOUT = 30.0


def is_root():
    return os.geteuid() == 0


def _make_traversable(path):
    """
    When root, let the postgres user reach `path`: add o+x to it and to every
    ancestor we own that lacks it (pytest makes its temp dirs 0700).
    """
    p = Path(path).resolve()
    for d in [p] + list(p.parents):
        try:
            st = d.stat()
        except OSError:
            return
        if st.st_uid == os.geteuid() and not st.st_mode & 0o001:
            os.chmod(d, (st.st_mode & 0o7777) | 0o011)


def _log_tail(path, n=20):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------- PostgreSQL

def pg_bin_dir():
    """The newest /usr/lib/postgresql/*/bin with initdb, or None."""
    dirs = [d for d in glob.glob("/usr/lib/postgresql/*/bin") if os.access(f"{d}/initdb", os.X_OK)]
    if not dirs:
        for name in ("initdb", "pg_ctl"):
            if not shutil.which(name):
                return None
        return str(Path(shutil.which("initdb")).parent)

    def ver(d):
        try:
            return [int(x) for x in Path(d).parent.name.split(".")]
        except ValueError:
            return [0]
    return sorted(dirs, key=ver)[-1]


class PgServer:
    """
    A throwaway PostgreSQL cluster in `base`/data on 127.0.0.1:port (TCP only,
    no Unix socket), with fsync=on and synchronous_commit=on (the defaults,
    stated so the durability claim does not depend on them), database
    "rhema", trust authentication for user postgres.
    """

    def __init__(self, base):
        self.bin = pg_bin_dir()
        self.base = Path(base)
        self.data = self.base / "data"
        self.logfile = self.base / "server.log"
        self.port = None
        self.running = False
        self.as_pg = []

    def _cmd(self, name, *args):
        return self.as_pg + [f"{self.bin}/{name}"] + list(args)

    def _run(self, name, *args, timeout=60, check=True):
        r = subprocess.run(self._cmd(name, *args), stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"{name} {' '.join(args)} failed ({r.returncode}):\n"
                                 f"{r.stdout}{r.stderr}\n{_log_tail(self.logfile)}")
        return r

    def init(self):
        self.base.mkdir(parents=True, exist_ok=True)
        if is_root():
            pw = pwd.getpwnam("postgres")
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
            os.chmod(self.base, 0o700)
            _make_traversable(self.base.parent)
            self.as_pg = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-locale", "--no-sync")
        self.port = free_port()
        self.start()
        r = subprocess.run([f"{self.bin}/createdb", "-h", "127.0.0.1", "-p", str(self.port),
                            "-U", "postgres", "rhema"], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise AssertionError(f"createdb failed: {r.stdout}{r.stderr}")
        return self

    @property
    def conninfo(self):
        return f"host=127.0.0.1 port={self.port} dbname=rhema user=postgres"

    def start(self):
        """Start (or restart) on the same data directory and port; waits until it accepts."""
        opts = (f"-c listen_addresses=127.0.0.1 -c port={self.port} "
                "-c unix_socket_directories='' -c fsync=on -c synchronous_commit=on "
                "-c full_page_writes=on")
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", str(int(SERVER_START_TIMEOUT)),
                  "-l", str(self.logfile), "-o", opts, "start")
        self.running = True
        return self

    def stop(self, mode="fast"):
        """pg_ctl -m fast (sessions are closed, a clean shutdown) or immediate (a crash)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
        self.running = False

    def crash(self):
        self.stop("immediate")

    def restart(self):
        return self.start()

    def cleanup(self):
        if self.data.exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "60",
                      "stop", check=False)
        self.running = False

    def log(self):
        return _log_tail(self.logfile, 50)

    def rhema_config(self, extra=""):
        return ('persistence: {\n  backend = "postgres";\n'
                f'  postgres = {{ conninfo = "{self.conninfo}"; {extra}}};\n}};\n')


def require_postgres():
    require_plugin("postgres")
    if pg_bin_dir() is None:
        pytest.skip("no PostgreSQL server binaries (apt-get install postgresql)")
    if is_root():
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run initdb as")
        if not shutil.which("runuser"):
            pytest.skip("running as root and runuser is missing")


@pytest.fixture
def pg_server(tmp_path):
    """A started PostgreSQL (PgServer) in tmp_path/pg; stopped at teardown."""
    require_postgres()
    s = PgServer(tmp_path / "pg")
    try:
        s.init()
        yield s
    finally:
        s.cleanup()


# ---------------------------------------------------------------- Redis

def redis_ping(port, timeout=1.0):
    """True when a Redis server on 127.0.0.1:port answers PING with PONG."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """
    A throwaway redis-server on 127.0.0.1:port with its data in `base`:
    appendonly yes, appendfsync always, no RDB snapshots.
    """

    def __init__(self, base, appendfsync="always"):
        self.base = Path(base)
        self.appendfsync = appendfsync
        self.logfile = self.base / "redis.log"
        self.port = None
        self.proc = None

    def init(self):
        self.base.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        return self.start()

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self):
        """Start (or restart) on the same directory and port; waits for PONG."""
        assert not self.running, "redis already running"
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir",
             str(self.base), "--save", "", "--appendonly", "yes", "--appendfsync",
             self.appendfsync, "--daemonize", "no", "--logfile", str(self.logfile)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_until(lambda: redis_ping(self.port) or self.proc.poll() is not None,
                          SERVER_START_TIMEOUT, 0.05) or not redis_ping(self.port):
            self.cleanup()
            raise AssertionError(f"redis-server did not start:\n{_log_tail(self.logfile)}")
        return self

    def stop(self, sig=signal.SIGTERM):
        """SIGTERM (a clean shutdown: clients are disconnected) or SIGKILL (a crash)."""
        if self.running:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError("redis-server did not stop within 30 s")

    def crash(self):
        self.stop(signal.SIGKILL)

    def restart(self):
        return self.start()

    def cleanup(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass

    def log(self):
        return _log_tail(self.logfile, 50)

    def rhema_config(self, extra=""):
        return ('persistence: {\n  backend = "redis";\n'
                f'  redis = {{ host = "127.0.0.1"; port = {self.port}; {extra}}};\n}};\n')


def require_redis():
    require_plugin("redis")
    if not shutil.which("redis-server"):
        pytest.skip("no redis-server (apt-get install redis-server)")


@pytest.fixture
def redis_server(tmp_path):
    """A started Redis (RedisServer) in tmp_path/redis; stopped at teardown."""
    require_redis()
    s = RedisServer(tmp_path / "redis")
    try:
        s.init()
        yield s
    finally:
        s.cleanup()


@pytest.fixture
def backend_server(request, tmp_path):
    """The server for request.param ('postgres' or 'redis'), started."""
    if request.param == "postgres":
        require_postgres()
        s = PgServer(tmp_path / "pg")
    else:
        require_redis()
        s = RedisServer(tmp_path / "redis")
    s.name = request.param
    try:
        s.init()
        yield s
    finally:
        s.cleanup()


# ---------------------------------------------------------------- records

SESSION_STATUSES = ("Active", "Paused", "Completed", "Cancelled")
VOLATILE = ("access_count", "last_accessed")  # change on reads, kept outside the record


def strip(rec):
    """A session record without the fields that reads change."""
    return {k: v for k, v in rec.items() if k not in VOLATILE}


def session_problem(rec, sid=None):
    """None when rec is a well-formed session record (of sid), else what is wrong."""
    if not isinstance(rec, dict):
        return f"not a JSON object: {rec!r:.200}"
    want = {"id": str, "topic": str, "participants": list, "status": str, "started_at": str,
            "messages": list, "decisions": list, "created_at": str, "updated_at": str,
            "version": int, "size_bytes": int, "access_count": int}
    for k, t in want.items():
        if not isinstance(rec.get(k), t):
            return f"field {k!r} is {rec.get(k)!r:.80} (expected {t.__name__})"
    if sid is not None and rec["id"] != sid:
        return f"id is {rec['id']!r}, expected {sid!r}"
    if rec["status"] not in SESSION_STATUSES:
        return f"status {rec['status']!r}"
    if rec["version"] < 1:
        return f"version {rec['version']}"
    for m in rec["messages"]:
        if not isinstance(m, dict) or not isinstance(m.get("id"), str) \
                or not isinstance(m.get("content"), str):
            return f"malformed message {m!r:.120}"
    return None


ANY = object()  # a field the model does not know: an append's new updated_at


def append_problem(ans, sid):
    """None when ans is the answer of an append to session sid, else what is wrong.

    An append answers the message and the session's new version, not the
    whole session (issue 17, item 9)."""
    if not isinstance(ans, dict):
        return f"not a JSON object: {ans!r:.200}"
    for k, t in {"session_id": str, "version": int, "size_bytes": int, "message_count": int,
                 "message": dict}.items():
        if not isinstance(ans.get(k), t):
            return f"field {k!r} is {ans.get(k)!r:.80} (expected {t.__name__})"
    if ans["session_id"] != sid:
        return f"session_id is {ans['session_id']!r}, expected {sid!r}"
    if not isinstance(ans["message"].get("id"), str):
        return f"malformed message {ans['message']!r:.120}"
    return None


def after_append(prev, ans):
    """The stripped record an acknowledged append leaves, from the one before it
    (None when that one is not known: then only the version is)."""
    if prev is None:
        return None
    rec = dict(prev, messages=prev["messages"] + [ans["message"]], version=ans["version"],
               size_bytes=ans["size_bytes"], updated_at=ANY)
    return rec


def same_record(got, want):
    """Is stripped record got the acknowledged want (ANY fields match anything)?"""
    if want is None:
        return True
    return got.keys() == want.keys() and all(w is ANY or got[k] == w for k, w in want.items())


def etag_version(headers):
    """The version in a strong ETag header, or None."""
    e = headers.get("ETag") if headers is not None else None
    if e and len(e) > 2 and e[0] == e[-1] == '"' and e[1:-1].isdigit():
        return int(e[1:-1])
    return None


# ---------------------------------------------------------------- summary lines

_summary = []


@pytest.fixture
def fault_report(request):
    """report(text): a line printed in the terminal summary (the test log)."""
    def report(text):
        _summary.append(f"{request.node.nodeid}: {text}")
    return report


def pytest_terminal_summary(terminalreporter):
    if _summary:
        terminalreporter.section("fault and crash tests")
        for line in _summary:
            terminalreporter.write_line(line)
