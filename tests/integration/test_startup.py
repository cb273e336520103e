"""
Starting rhemad as a newcomer does (issue 17 item 19, issue 18 items 1-4,
6 and 8): -t creates nothing, the data directory, which configuration file is
read, plugins that are not safe to load, errors that reach the terminal while
the daemon is not up yet, syslog once it is, and what a reload says.
"""

import os
import re
import shutil
import signal
import socket
import subprocess

import pytest

from conftest import (Daemon, PLUGIN_DIR, TOP_BUILDDIR, TOP_SRCDIR, free_port, memory_config,
                      require_plugin, run_rhemad)

RHEMACTL = TOP_BUILDDIR / "rhemactl"


def write(path, text):
    path.write_text(text)
    return str(path)


def tree(path):
    """Every entry under path, relative to it."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def compiled_path(name):
    """A path the build compiled in (rhema_paths.h, made by make)."""
    text = (TOP_BUILDDIR / "rhema_paths.h").read_text()
    return re.search(rf'#define {name} "([^"]*)"', text).group(1)


# ---- -t creates nothing (17.19, 18.2) ----

def test_t_on_the_sample_config_creates_nothing(tmp_path):
    """The sample stores SQLite under ./data; -t neither creates ./data nor rhema.db."""
    require_plugin("sqlite")
    sample = TOP_SRCDIR / "etc" / "rhemad.conf"
    r = run_rhemad(["-t", "-c", str(sample), "-P", str(PLUGIN_DIR)], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "test is successful" in r.stdout
    assert f"data directory {tmp_path}/data does not exist" in r.stdout, r.stdout
    assert tree(tmp_path) == [], tree(tmp_path)


def test_t_with_every_data_path_set_creates_nothing(tmp_path):
    require_plugin("sqlite")
    conf = write(tmp_path / "all.conf",
                 'service: { data_directory = "var/lib"; pidfile = "run/r.pid"; };\n'
                 'persistence: { backend = "sqlite"; sqlite = { path = "db/x.db"; };\n'
                 '  enable_backups = true; backup_directory = "bk"; };\n'
                 'advanced_features: { key_management: { keyring_path = "ring";\n'
                 '  backup: { enabled = true; directory = "kb"; }; }; };\n'
                 'logging: { file = "log/rhemad.log"; };\n')
    before = tree(tmp_path)
    r = run_rhemad(["-t", "-c", conf, "-P", str(PLUGIN_DIR)], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert tree(tmp_path) == before


def test_t_refuses_a_data_directory_that_is_a_file(tmp_path):
    (tmp_path / "notadir").write_text("x")
    r = run_rhemad(["-t", "-P", str(PLUGIN_DIR), "-o", "persistence.backend=memory",
                    "-o", "service.data_directory=notadir"], cwd=tmp_path)
    assert r.returncode == 1
    assert f"{tmp_path}/notadir: not a directory" in r.stderr, r.stderr
    assert "test failed" in r.stderr


# ---- the data directory (18.2) ----

def test_relative_paths_resolve_against_the_data_directory(tmp_path, daemons):
    """A relative data_directory is relative to where rhemad starts; the storage's
    relative path is inside it, whatever the working directory becomes."""
    require_plugin("sqlite")
    d = daemons(config='service: { data_directory = "state"; };\n'
                       'persistence: { backend = "sqlite"; sqlite = { path = "db/r.db"; }; };\n')
    d.start()
    assert d.request("PUT", "/v1/sessions/dd", {"topic": "t"}).status == 201
    assert (tmp_path / "state" / "db" / "r.db").exists(), tree(tmp_path)
    assert not (tmp_path / "db").exists()
    assert f"data directory {tmp_path}/state" in d.log()
    assert d.stop() == 0


def test_a_data_directory_that_cannot_be_made_stops_the_start(tmp_path):
    (tmp_path / "file").write_text("x")
    r = run_rhemad(["-f", "-P", str(PLUGIN_DIR), "-o", "persistence.backend=memory",
                    "-o", f"service.listen=127.0.0.1:{free_port()}",
                    "-o", f"service.data_directory={tmp_path}/file/sub"], cwd=tmp_path)
    assert r.returncode == 1
    assert f"service.data_directory {tmp_path}/file/sub" in r.stderr, r.stderr


# ---- which configuration file (18.1) ----

def test_first_log_line_names_the_configuration(tmp_path, daemons):
    d = daemons()
    d.start()
    first = d.log().splitlines()[0]
    assert "starting" in first and f"configuration {d.conf}" in first, first
    assert d.stop() == 0


def test_without_c_the_installed_file_or_built_in_defaults(tmp_path):
    """Without -c rhemad reads $sysconfdir/rhema/rhemad.conf when it exists."""
    installed = compiled_path("RHEMA_CONFIG_FILE")
    r = run_rhemad(["-h"])
    assert installed in r.stdout, r.stdout
    if os.path.exists(installed):
        pytest.skip(f"{installed} exists on this machine")
    with socket.socket() as busy:  # the start fails after its first line
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        r = run_rhemad(["-f", "-P", str(PLUGIN_DIR), "-o", "persistence.backend=memory",
                        "-o", f"service.listen=127.0.0.1:{port}"], cwd=tmp_path)
    assert r.returncode == 1
    first = (r.stderr.splitlines() or [""])[0]
    assert "configuration built-in defaults" in first, r.stderr


# ---- the compiled-in paths follow configure (18.3) ----

def _make_out(*args):
    """make in the build tree, never remaking its Makefile; its stdout."""
    if shutil.which("make") is None or not (TOP_BUILDDIR / "Makefile").exists():
        pytest.skip("no make or no Makefile in the build directory")
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    r = subprocess.run(["make", "-s", "-o", "Makefile", "-C", str(TOP_BUILDDIR)] + list(args),
                       env=env, capture_output=True, text=True, timeout=120)
    return r


def test_the_compiled_paths_follow_configure():
    """
    The paths are not -D flags make cannot see change: rhema_paths.h holds the
    ones the current Makefile has, it is remade whenever the Makefile is (so
    whenever config.status is), and what includes it is recompiled then.
    """
    r = _make_out("--eval", "__rhema_paths: ; @echo '$(plugindir)|$(rhemaconfdir)/rhemad.conf|"
                  "$(rhemastatedir)'", "__rhema_paths")
    assert r.returncode == 0, r.stderr
    plugindir, conffile, statedir = r.stdout.strip().split("|")
    assert compiled_path("RHEMA_PLUGINDIR") == plugindir
    assert compiled_path("RHEMA_CONFIG_FILE") == conffile
    assert compiled_path("RHEMA_DATA_DIRECTORY") == statedir
    db = _make_out("-p", "-q", "rhema_paths.h").stdout  # make's rules, nothing run
    assert re.search(r"^rhema_paths\.h: Makefile$", db, re.M), "rhema_paths.h must depend on Makefile"
    assert re.search(r"^Makefile: .*\bconfig\.status\b", db, re.M)
    deps = list((TOP_BUILDDIR / "core" / ".deps").glob("*"))
    if not deps:
        pytest.skip("built without dependency tracking")
    users = {p.name for p in deps if "rhema_paths.h" in p.read_text(errors="replace")}
    for obj in ("librhemacore_la-config.Plo", "librhemacore_la-config_schema.Plo",
                "rhemad-main.Po"):
        assert obj in users, (obj, sorted(users))


# ---- make install keeps an edited configuration (18.4) ----

def _make(target, destdir):
    """One install target of the build tree's Makefile, into DESTDIR."""
    if shutil.which("make") is None or not (TOP_BUILDDIR / "Makefile").exists():
        pytest.skip("no make or no Makefile in the build directory")
    # a make of its own, not a job of the make running the tests, and one that
    # never remakes the Makefile (-o) under it when Makefile.am changed meanwhile
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    r = subprocess.run(["make", "-s", "-o", "Makefile", "-C", str(TOP_BUILDDIR), target,
                        f"DESTDIR={destdir}"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_install_keeps_an_edited_configuration_and_uninstall_too(tmp_path):
    dest = tmp_path / "dest"
    conf = dest / compiled_path("RHEMA_CONFIG_FILE").lstrip("/")
    sample = conf.with_name("rhemad.conf.sample")
    shipped = (TOP_BUILDDIR / "etc" / "rhemad.conf.sample").read_bytes()
    _make("install-data-local", dest)  # a first install: the file and its sample
    assert conf.read_bytes() == shipped and sample.read_bytes() == shipped
    conf.write_bytes(shipped + b"# the operator's own line\n")
    sample.write_bytes(b"an older sample\n")
    said = _make("install-data-local", dest)  # a reinstall keeps the edited file
    assert conf.read_bytes().endswith(b"# the operator's own line\n")
    assert sample.read_bytes() == shipped, "the new sample is installed beside it"
    assert "kept" in said, said
    _make("uninstall-local", dest)  # uninstall keeps it too, and removes the sample
    assert conf.read_bytes().endswith(b"# the operator's own line\n")
    assert not sample.exists()
    conf.unlink()  # an unedited file is the package's: uninstall removes it
    _make("install-data-local", dest)
    _make("uninstall-local", dest)
    assert not conf.exists() and not sample.exists()


# ---- -t checks the storage plugin's own group (storage check(), minor 4) ----

# backend -> (a good group: its lines, that would create or connect to something
#             when opened; bad values: (line, what stderr must name))
STORAGE_GROUPS = {
    "sqlite": (['path = "db/x.db";', "cache_size_kib = 1024;", 'synchronous = "full";'],
               [('cache_size_kib = "lots";', "sqlite: cache_size_kib must be an integer"),
                ('synchronous = "sometimes";', "sqlite: synchronous 'sometimes' is not one of"),
                ('path = ":memory:";', "sqlite: path ':memory:' is not supported")]),
    "file": (['directory = "store";', "fsync = false;"],
             [("fsync = 3;", "file: fsync must be true or false"),
              ('directory = "";', "file: directory is empty")]),
    # port 1: nothing listens there; -t passing shows it never connects
    "postgres": (['conninfo = "host=127.0.0.1 port=1 dbname=nothere";', 'schema = "s1";',
                  "connect_timeout_seconds = 2;"],
                 [('conninfo = "nosuchoption=1";', "postgres: conninfo:"),
                  ('schema = "1bad";', "postgres: schema must be"),
                  ("connect_timeout_seconds = 0;", "postgres: connect_timeout_seconds must be")]),
    "redis": (['host = "127.0.0.1";', "port = 1;", 'prefix = "p:";', "timeout_ms = 100;"],
              [("port = 70000;", "redis: port must be an integer in 1..65535"),
               ('tls_ca_file = "/x/ca.pem";', "redis: tls_ca_file is set but tls is not true"),
               ('tls = true; tls_ca_file = "/nonexistent/ca.pem";', "/nonexistent/ca.pem")]),
    "memory": ([], []),
}


def storage_conf(tmp_path, backend, lines):
    """A configuration whose persistence.<backend> group holds lines, the
    first of them on line 5 of the file."""
    return write(tmp_path / f"{backend}.conf",
                 f'service: {{ data_directory = "{tmp_path}/var"; }};\n'
                 "persistence: {\n"
                 f'  backend = "{backend}";\n'
                 f"  {backend} = {{\n"
                 + "".join(f"    {l}\n" for l in lines)
                 + "  };\n};\n")


def t_check(tmp_path, conf):
    before = tree(tmp_path)
    r = run_rhemad(["-t", "-c", conf, "-P", str(PLUGIN_DIR)], cwd=tmp_path)
    assert tree(tmp_path) == before, "rhemad -t created something"
    return r


@pytest.mark.parametrize("backend", sorted(STORAGE_GROUPS))
def test_t_refuses_an_unknown_key_of_the_storage_group(tmp_path, backend):
    require_plugin(backend)
    good, _ = STORAGE_GROUPS[backend]
    conf = storage_conf(tmp_path, backend, ["bogus_key = 3;"] + good)
    r = t_check(tmp_path, conf)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert (f"{conf}:5: unknown key 'persistence.{backend}.bogus_key' for plugin '{backend}'"
            in r.stderr), r.stderr
    assert "test failed" in r.stderr, r.stderr


@pytest.mark.parametrize("backend,line,want",
                         [(b, line, want) for b in sorted(STORAGE_GROUPS)
                          for line, want in STORAGE_GROUPS[b][1]])
def test_t_refuses_a_bad_value_of_the_storage_group(tmp_path, backend, line, want):
    require_plugin(backend)
    conf = storage_conf(tmp_path, backend, [line])
    r = t_check(tmp_path, conf)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert f"rhemad: storage '{backend}': " in r.stderr, r.stderr
    assert want in r.stderr, r.stderr
    assert f"{conf}:5" in r.stderr or "/nonexistent/" in want, r.stderr
    assert "test failed" in r.stderr, r.stderr


@pytest.mark.parametrize("backend", sorted(STORAGE_GROUPS))
def test_t_passes_a_good_storage_group_and_creates_nothing(tmp_path, backend):
    require_plugin(backend)
    conf = storage_conf(tmp_path, backend, STORAGE_GROUPS[backend][0])
    r = t_check(tmp_path, conf)
    assert r.returncode == 0, r.stderr
    assert "test is successful" in r.stdout, r.stdout
    if backend == "memory":  # neither durable nor shared: -t opens it
        assert "storage 'memory' opens" in r.stdout, r.stdout
    else:
        assert (f"storage '{backend}' is not opened (-t creates nothing); its group is valid"
                in r.stdout), r.stdout


@pytest.mark.parametrize("line", ["bogus_key = 3;", 'cache_size_kib = "lots";'])
def test_t_and_the_start_refuse_a_sqlite_group_with_the_same_message(tmp_path, line):
    require_plugin("sqlite")
    conf = storage_conf(tmp_path, "sqlite", [line])
    t = t_check(tmp_path, conf)
    start = run_rhemad(["-f", "-c", conf, "-P", str(PLUGIN_DIR), "-o",
                        f"service.listen=127.0.0.1:{free_port()}"], cwd=tmp_path)
    assert t.returncode == 1 and start.returncode != 0, (t.stderr, start.stderr)
    said = [l for l in t.stderr.splitlines() if l.startswith("rhemad: ") and f"{conf}:5" in l]
    assert said, t.stderr
    assert said[0].removeprefix("rhemad: ") in start.stderr, (said, start.stderr)


# ---- plugins that are not safe to load (17.19) ----

def plugin_copy(tmp_path, name="storage_memory.so", size=None):
    d = tmp_path / "plugins"
    d.mkdir(exist_ok=True)
    d.chmod(0o755)
    data = (PLUGIN_DIR / name).read_bytes()
    dst = d / name
    dst.write_bytes(data if size is None else data[:size])
    dst.chmod(0o644)
    return dst


@pytest.mark.parametrize("fraction", [0.002, 0.05, 0.3, 0.6, 0.97])
def test_a_truncated_plugin_is_refused_not_a_crash(tmp_path, fraction):
    full = (PLUGIN_DIR / "storage_memory.so").stat().st_size
    so = plugin_copy(tmp_path, size=max(8, int(full * fraction)))
    r = run_rhemad(["-t", "-P", str(PLUGIN_DIR), "-o", "persistence.backend=memory",
                    "-o", f"plugins.load=[{so}]"], cwd=tmp_path)
    assert r.returncode == 1, (r.returncode, r.stderr)  # not -SIGBUS
    assert str(so) in r.stderr and "cannot load" in r.stderr, r.stderr
    r = subprocess.run([str(RHEMACTL), "plugin", "info", str(so)], capture_output=True,
                       text=True, timeout=15)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "cannot load" in r.stderr, r.stderr


def test_an_intact_copy_loads(tmp_path):
    so = plugin_copy(tmp_path)
    r = run_rhemad(["-t", "-P", str(PLUGIN_DIR), "-o", "persistence.backend=memory",
                    "-o", f"plugins.load=[{so}]"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(RHEMACTL), "plugin", "info", str(so)], capture_output=True,
                       text=True, timeout=15)
    assert r.returncode == 0 and "plugin memory" in r.stdout, r.stderr


@pytest.mark.parametrize("who,mode", [("file", 0o664), ("file", 0o646),
                                      ("directory", 0o775), ("directory", 0o757),
                                      ("directory", 0o1777)])
def test_a_plugin_others_could_change_is_refused(tmp_path, who, mode):
    so = plugin_copy(tmp_path)
    (so if who == "file" else so.parent).chmod(mode)
    try:
        r = run_rhemad(["-t", "-P", str(PLUGIN_DIR), "-o", "persistence.backend=memory",
                        "-o", f"plugins.load=[{so}]"], cwd=tmp_path)
    finally:
        so.parent.chmod(0o755)
    assert r.returncode == 1, r.stdout
    assert "refused" in r.stderr and "writable by" in r.stderr, r.stderr
    assert "chmod go-w" in r.stderr


# ---- configuration values (17.19) ----

def test_an_unclosed_list_override_is_refused(tmp_path):
    r = run_rhemad(["-t", "-P", str(PLUGIN_DIR), "-o", "persistence.backend=memory",
                    "-o", "service.cors.origins=["], cwd=tmp_path)
    assert r.returncode == 1
    assert "-o service.cors.origins=[: 'service.cors.origins' must be a list of strings" \
        in r.stderr, r.stderr


def test_max_decompressed_bytes_has_an_upper_bound(tmp_path):
    conf = write(tmp_path / "big.conf", memory_config() +
                 'advanced_features: {\n  compression: {\n'
                 '    max_decompressed_bytes = 4611686018427387904L;\n  };\n};\n')
    r = run_rhemad(["-t", "-c", conf, "-P", str(PLUGIN_DIR)], cwd=tmp_path)
    assert r.returncode == 1
    n = memory_config().count("\n") + 3
    assert f"{conf}:{n}: 'advanced_features.compression.max_decompressed_bytes' must be " \
        "between 1 and 1073741824" in r.stderr, r.stderr


# ---- errors reach the terminal until the daemon is up (18.6) ----

def test_port_in_use_reaches_stderr_with_a_log_file(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        r = run_rhemad(["-f", "-P", str(PLUGIN_DIR), "-o", "persistence.backend=memory",
                        "-o", f"service.listen=127.0.0.1:{port}",
                        "-o", f"logging.file={tmp_path}/r.log"], cwd=tmp_path)
    assert r.returncode == 1
    assert "Address already in use" in r.stderr, r.stderr
    assert "Address already in use" in (tmp_path / "r.log").read_text()


def test_locked_pidfile_reaches_stderr_with_a_log_file(tmp_path, daemons):
    pidfile = tmp_path / "r.pid"
    d = daemons(args=["-p", str(pidfile)])
    d.start()
    r = run_rhemad(["-f", "-P", str(PLUGIN_DIR), "-o", "persistence.backend=memory",
                    "-o", f"service.listen=127.0.0.1:{free_port()}", "-p", str(pidfile),
                    "-o", f"logging.file={tmp_path}/second.log"], cwd=tmp_path)
    assert r.returncode == 1
    assert "already running" in r.stderr, r.stderr
    assert d.stop() == 0


def test_daemon_mode_failure_with_a_log_file_reaches_the_terminal(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        r = run_rhemad(["-P", str(PLUGIN_DIR), "-o", "persistence.backend=memory",
                        "-o", f"service.listen=127.0.0.1:{port}",
                        "-o", f"logging.file={tmp_path}/d.log"], cwd=tmp_path)
    assert r.returncode == 1
    assert "Address already in use" in r.stderr, r.stderr


# ---- after daemonizing without a log file: syslog (18.6) ----

def _private_dev_log():
    """
    Why a private /dev/log cannot be had here, or None.  glibc's syslog()
    writes to /dev/log, a fixed path: the test gives rhemad a mount namespace
    of its own (unshare -m, root only) whose /dev is a tmpfs holding null,
    zero, random, urandom and a /dev/log bound to the test's socket, so the
    machine's own /dev/log (if any) is never touched.
    """
    for tool in ("unshare", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    r = subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=10)
    if r.returncode != 0:
        return "unshare -m is not permitted here (needs root)"
    return None


def test_daemonized_without_a_log_file_logs_to_syslog(tmp_path, daemons):
    why = _private_dev_log()
    if why:
        pytest.skip(why)
    logsock = tmp_path / "log"
    if len(str(logsock)) > 100:
        pytest.skip("temporary directory too deep for a unix socket path")
    olddev, pidfile, port = tmp_path / "olddev", tmp_path / "r.pid", free_port()
    olddev.mkdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sink:
        sink.bind(str(logsock))
        sink.settimeout(10)
        rhemad = [str(TOP_BUILDDIR / "rhemad"), "-c", "/dev/null", "-P", str(PLUGIN_DIR),
                  "-p", str(pidfile), "-o", "persistence.backend=memory",
                  "-o", f"service.listen=127.0.0.1:{port}", "-o", "service.workers=1",
                  "-o", f"service.data_directory={tmp_path}", "-o", "logging.access_log=true"]
        script = (
            "set -e\n"
            "mount --make-rprivate /\n"
            f"mount --rbind /dev '{olddev}'\n"
            "mount -t tmpfs -o mode=755 tmpfs /dev\n"
            "for n in null zero random urandom; do\n"
            f"  : > /dev/$n; mount --bind '{olddev}'/$n /dev/$n\n"
            "done\n"
            f": > /dev/log; mount --bind '{logsock}' /dev/log\n"
            'exec "$@"\n')
        # no -f: rhemad daemonizes; the launcher returns once the daemon is up
        r = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh"] + rhemad,
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        pid = int(pidfile.read_text().strip())
        daemons.pids.append(pid)
        # until the daemon was up, its lines reached the terminal
        assert "started (pid %d" % pid in r.stderr, r.stderr
        seen = []

        def until(text):
            while not any(text in m for m in seen):
                try:
                    seen.append(sink.recv(65536).decode("utf-8", "replace"))
                except socket.timeout:
                    raise AssertionError(f"no syslog line with {text!r}: {seen}")

        # a line written after the fork, on request: the access log's
        client = Daemon(tmp_path, name="client", port=port)
        assert client.request("GET", "/v1/sessions/syslog-probe").status == 404
        until("/v1/sessions/syslog-probe")
        os.kill(pid, signal.SIGHUP)  # and after a reload (which reopens the log)
        until("configuration re-read")
        os.kill(pid, signal.SIGTERM)
        until("main: stopped")
    for m in seen:  # syslog's framing: <priority>timestamp rhemad[pid]: ...
        assert re.match(r"<\d+>.*\brhemad\[%d\]: \[\w+\] " % pid, m), m
    assert not [m for m in seen if "\n" in m.rstrip("\n")], seen


# ---- what a reload says (18.8) ----

def _conf(level, listen):
    return (f'service: {{ listen = "{listen}"; }};\n'
            f'logging: {{ level = "{level}"; }};\n' + memory_config())


def test_reload_names_the_level_and_warns_once_per_change(tmp_path, daemons):
    port = free_port()
    running = f"127.0.0.1:{port}"
    d = daemons(config=_conf("info", running), port=port)
    d.proc = None
    # the harness passes service.listen with -o; here the file alone sets it
    d.command = lambda: [str(TOP_BUILDDIR / "rhemad"), "-f", "-c", str(d.conf),
                         "-P", str(PLUGIN_DIR), "-o", "service.workers=1",
                         "-o", f"service.data_directory={tmp_path}"]
    d.start()
    other = f"127.0.0.1:{free_port()}"

    def reload_and_wait():
        mark = d.log_size()
        d.send(signal.SIGHUP)
        assert d.wait_log("configuration re-read", since=mark), d.log()[mark:]
        return d.log()[mark:]

    d.write_config(_conf("info", other))
    said = reload_and_wait()
    assert "log level info," in said, said
    assert said.count("service.listen changed") == 1 and "restart to apply" in said, said
    said = reload_and_wait()  # nothing changed since: no second warning
    assert "service.listen" not in said, said
    d.write_config(_conf("notice", running))
    said = reload_and_wait()
    assert "log level notice," in said, said
    assert "service.listen changed" in said and "back to the running value" in said, said
    assert d.stop() == 0
