"""
Docs that run as written (issue 18, item 13).

Every fenced ```sh block in README.md and doc/*.md that has the line
`<!-- doc-test -->` right before its fence runs here, in bash with -e and
pipefail, against a rhemad this test starts (memory backend, a free
127.0.0.1 port, a temporary working directory).  The examples say
`localhost:8080` as a reader would type it; the test rewrites that (and
`127.0.0.1:8080`) to the daemon's port and also exports RHEMA_URL.  The
build tree's rhemad and rhemactl come first on PATH.  The doc's own file is
copied into the working directory, so `@README.md` works.

Blocks that cannot run here (apt-get, systemctl, make install) stay
unmarked.  And every man page under doc/ must pass `man --warnings -l`
without a word on stderr.
"""
import os
import re
import shlex
import shutil
import signal
import sys
import subprocess
from pathlib import Path

import pytest

from conftest import Daemon, free_port

SRC = Path(os.environ.get("top_srcdir", Path(__file__).resolve().parents[2]))
BUILD = Path(os.environ.get("top_builddir", SRC))
MARKER = "<!-- doc-test -->"
# a block that starts (and stops) its own rhemad on localhost:8080
MARKER_OWN = "<!-- doc-test: own-daemon -->"
BLOCK_TIMEOUT = 120


def marked_blocks(path):
    """The marked ```sh blocks of a Markdown file: [(line number, text, own daemon)]."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        if lines[i].strip() in (MARKER, MARKER_OWN):
            fence = lines[i + 1].strip() if i + 1 < len(lines) else ""
            assert fence == "```sh", f"{path.name}:{i + 1}: {MARKER} not followed by ```sh"
            start = i + 2
            end = start
            while end < len(lines) and lines[end].strip() != "```":
                end += 1
            assert end < len(lines), f"{path.name}:{i + 2}: unterminated block"
            blocks.append((start, "\n".join(lines[start:end]) + "\n",
                           lines[i].strip() == MARKER_OWN))
            i = end
        i += 1
    return blocks


def doc_files():
    return [SRC / "README.md"] + sorted((SRC / "doc").glob("*.md"))


ALL_BLOCKS = [(f, n, text, own) for f in doc_files() for n, text, own in marked_blocks(f)]


def test_marked_blocks_exist():
    # the marker is what makes a doc tested: losing it silently must fail
    per_file = {f.name for f, _, _, _ in ALL_BLOCKS}
    assert "README.md" in per_file
    assert "http-api.md" in per_file
    assert "writing-plugins.md" in per_file


EXPECTED = re.compile(r"^# ([{\[\d].*)$")

# Compare a command's output with the doc's "# ..." line; "..." in it
# stands for any text.
EXPECT_FN = r"""
__expect() {
  "$__py" - "$1" "$2" <<'__EOF'
import re, sys
out, want = sys.argv[1].strip(), sys.argv[2].strip()
pat = ".*".join(re.escape(p) for p in want.split("..."))
if not re.fullmatch(pat, out, re.S):
    sys.exit("doc says:    %s\nrhema says:  %s" % (want, out))
__EOF
}
"""


def with_checks(text):
    """
    Turn the doc's expected-output comments into checks: a "# {...}",
    "# [...]" or "# 404" line right after a command (its lines joined by
    trailing backslashes) is that command's whole output.
    """
    lines = text.splitlines()
    out = []
    seg = []  # the current command's lines
    for ln in lines:
        m = EXPECTED.match(ln)
        if m and seg:
            out.append("__out=$(")
            out.extend(seg)
            out.append(")")
            out.append("__expect \"$__out\" " + shlex.quote(m.group(1)))
            seg = []
        elif ln.strip() == "" or ln.lstrip().startswith("#"):
            out.extend(seg)
            seg = []
            out.append(ln)
        else:
            if seg and not seg[-1].rstrip().endswith("\\"):
                out.extend(seg)  # a new command starts
                seg = []
            seg.append(ln)
    out.extend(seg)
    return EXPECT_FN + "\n".join(out) + "\n"


def run_block(text, cwd, port, env_extra=None):
    script = re.sub(r"\b(localhost|127\.0\.0\.1):8080\b", f"127.0.0.1:{port}", text)
    script = with_checks(script)
    env = dict(os.environ)
    env["PATH"] = f"{BUILD}{os.pathsep}{env.get('PATH', '')}"
    env["RHEMA_URL"] = f"http://127.0.0.1:{port}"
    env["__py"] = sys.executable
    env["RHEMA_SRC"] = str(SRC)
    env["RHEMA_BUILD"] = str(BUILD)
    env.update(env_extra or {})
    # its own session, so that whatever the block left running (a rhemad
    # it started in the background, when it failed before stopping it) is
    # killed with it
    proc = subprocess.Popen(["bash", "-e", "-o", "pipefail", "-c", script], cwd=str(cwd), env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=BLOCK_TIMEOUT)
    except subprocess.TimeoutExpired:
        out, err = "", f"timed out after {BLOCK_TIMEOUT} s"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("doc,line,text,own", ALL_BLOCKS,
                         ids=[f"{f.name}:{n}" for f, n, _, _ in ALL_BLOCKS])
def test_doc_block(tmp_path, doc, line, text, own):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(doc, work / doc.name)
    if own:
        r = run_block(text, work, free_port())
    else:
        d = Daemon(tmp_path)
        d.start()
        try:
            r = run_block(text, work, d.port)
        finally:
            d.stop()
    assert r.returncode == 0, (
        f"{doc.name}:{line}: block exited {r.returncode}\n--- stdout\n{r.stdout}"
        f"\n--- stderr\n{r.stderr}")


MAN_PAGES = sorted(p for p in (SRC / "doc").iterdir() if re.search(r"\.[1-8]$", p.name))


def test_man_pages_found():
    assert {p.name for p in MAN_PAGES} >= {"rhemad.8", "rhemactl.1", "rhemad.conf.5"}


@pytest.mark.parametrize("page", MAN_PAGES, ids=[p.name for p in MAN_PAGES])
def test_man_page_clean(page):
    if shutil.which("man") is None:
        pytest.skip("man is not installed")
    env = dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8")
    r = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", str(page)], env=env,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip(), f"{page.name} renders empty"
    assert r.stderr == "", f"{page.name}:\n{r.stderr}"


def _man_sections(page):
    """The page rendered at 80 columns, as {section heading: its text}."""
    env = dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8")
    r = subprocess.run(["man", "-E", "UTF-8", "-l", str(page)], env=env, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    sections, name = {}, None
    for line in r.stdout.splitlines():
        if re.match(r"^[A-Z][A-Z ]+$", line):
            name = line
            sections[name] = ""
        elif name:
            sections[name] += line + "\n"
    return sections


def test_rhemad_8_signals_section_names_every_signal_handled():
    """
    rhemad(8) documents every signal core/main.c handles under SIGNALS (issue
    18, item 7), not elsewhere: three branches editing the page once left
    SIGUSR1 and SIGPIPE under FILES.
    """
    if shutil.which("man") is None:
        pytest.skip("man is not installed")
    main_c = (SRC / "core" / "main.c").read_text()
    handled = set(re.findall(r"evsignal_new\([^,]+,\s*(SIG[A-Z0-9]+)", main_c))
    handled |= set(re.findall(r"\bsignal\((SIG[A-Z0-9]+),", main_c))
    assert {"SIGTERM", "SIGHUP", "SIGUSR1"} <= handled, handled
    sections = _man_sections(SRC / "doc" / "rhemad.8")
    signals = sections.get("SIGNALS", "")
    for sig in sorted(handled):
        assert re.search(rf"^ {{7}}{sig}\b|^ {{7}}\S.*, {sig}\b", signals, re.M), \
            f"{sig} is not an entry of rhemad(8) SIGNALS"
    for name, text in sections.items():
        if name != "SIGNALS":
            for sig in handled:
                assert not re.search(rf"^ {{7}}{sig}\b", text, re.M), \
                    f"{sig} is an entry of rhemad(8) {name}, not SIGNALS"
