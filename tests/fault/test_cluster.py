"""
Leader election with real processes (issue 5, items 1, 2, 5; DESIGN.md §7):
three rhemad nodes on loopback share one backend -- PostgreSQL, then Redis,
then one SQLite file -- with a 3 s lease (renewed every 1 s, retried for one
1 s heartbeat, so a leader steps down 2 s after its last renewal started).

A sampler asks every running node GET /v1/cluster/leader every 100 ms for
the whole test; each answer says whether that node leads now and with which
epoch.  Over all the answers:
  - an epoch is only ever claimed by one node;
  - a claim never carries a smaller epoch than a claim answered before it
    was asked (no node claims leadership once a larger epoch exists);
  - no two nodes claim in the same sampling round.
And, in order:
  1. SIGKILL the leader: another node leads within ttl + one renewal
     interval (+ sampling tolerance), with a larger epoch, and the old epoch
     is fenced (409) on the new leader's consensus API;
  2. SIGSTOP the leader for longer than its lease: another takes over; on
     SIGCONT the old one answers not-leader at once (its deadline is checked
     on every call) and never claims again; its old epoch is fenced on its
     own API too;
  3. SIGTERM the leader: it hands the lease back and another node leads
     well within the lease TTL.
"""

import os
import signal
import threading
import time

import pytest

from conftest import sqlite_config, require_plugin, wait_until

LEASE_S = 3
HEARTBEAT_S = 1
RENEW_S = LEASE_S / 3
TOLERANCE_S = 0.5          # sampling, scheduling, HTTP
FAILOVER_MAX_S = LEASE_S + RENEW_S + TOLERANCE_S
GRACEFUL_MAX_S = RENEW_S + TOLERANCE_S   # well under the lease TTL
SAMPLE_EVERY_S = 0.1
OVERRIDES = [
    "distributed.enabled=true",
    f"distributed.cluster.leader_lease_seconds={LEASE_S}",
    f"distributed.cluster.heartbeat_interval_seconds={HEARTBEAT_S}",
    f"distributed.cluster.node_timeout_seconds={LEASE_S}",
    "distributed.cluster.name=faulttest",
]


class Sampler(threading.Thread):
    """GET /v1/cluster/leader on every running, unpaused node, every 100 ms."""

    def __init__(self, nodes):
        super().__init__(daemon=True)
        self.nodes = nodes
        self.paused = set()       # names of SIGSTOPped nodes (skipped)
        self.stop_ev = threading.Event()
        self.samples = []         # (round, t_start, t_end, name, is_leader, epoch)
        self.rounds = 0
        self.lock = threading.Lock()

    def ask(self, d, rnd):
        t0 = time.monotonic()
        try:
            r = d.request("GET", "/v1/cluster/leader", timeout=1.0)
            body = r.json() if r.status == 200 else None
        except (OSError, ValueError):
            return None
        t1 = time.monotonic()
        if not body:
            return None
        s = (rnd, t0, t1, d.name, bool(body["is_leader"]), body["epoch"] if body["is_leader"] else 0)
        with self.lock:
            self.samples.append(s)
        return s

    def run(self):
        while not self.stop_ev.is_set():
            t = time.monotonic()
            self.rounds += 1
            for d in list(self.nodes):
                if d.running() and d.name not in self.paused:
                    self.ask(d, self.rounds)
            self.stop_ev.wait(max(0.0, SAMPLE_EVERY_S - (time.monotonic() - t)))

    def claims(self):
        with self.lock:
            return [s for s in self.samples if s[4]]

    def check(self):
        """The invariants over every answer; returns the claims."""
        claims = self.claims()
        owner = {}
        for c in claims:
            assert owner.setdefault(c[5], c[3]) == c[3], \
                f"epoch {c[5]} claimed by {owner[c[5]]} and by {c[3]}"
        for a in claims:
            for b in claims:
                if a[2] < b[1]:  # a answered before b was asked
                    assert a[5] <= b[5], f"{b[3]} claimed epoch {b[5]} after {a[3]} had {a[5]}"
        per_round = {}
        for c in claims:
            per_round.setdefault(c[0], set()).add(c[3])
        double = {r: n for r, n in per_round.items() if len(n) > 1}
        assert not double, f"two leaders in one sampling round: {double}"
        return claims


def leader_of(d):
    """(is_leader, epoch) as node d answers, or None when it does not answer."""
    try:
        r = d.request("GET", "/v1/cluster/leader", timeout=1.0)
    except OSError:
        return None
    if r.status != 200:
        return None
    b = r.json()
    return bool(b["is_leader"]), b["epoch"]


def current_leader(nodes, exclude=()):
    for d in nodes:
        if d.running() and d.name not in exclude:
            v = leader_of(d)
            if v and v[0]:
                return d, v[1]
    return None


def wait_new_leader(nodes, exclude, timeout):
    """Poll every 20 ms; returns (node, epoch, seconds waited)."""
    t0 = time.monotonic()
    while True:
        got = current_leader(nodes, exclude)
        if got:
            return got[0], got[1], time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            return None, 0, time.monotonic() - t0
        time.sleep(0.02)


def fenced(d, epoch, node="fence-check"):
    r = d.request("PUT", f"/v1/consensus/{node}/state", {"term": 1},
                  headers={"X-Rhema-Epoch": str(epoch)})
    return r.status, (r.json() or {})


@pytest.fixture(params=["postgres", "redis", "sqlite"])
def shared_config(request, tmp_path):
    if request.param == "sqlite":
        require_plugin("sqlite")
        return "sqlite", sqlite_config(tmp_path / "cluster.db")
    server = request.getfixturevalue("pg_server" if request.param == "postgres" else
                                     "redis_server")
    return request.param, server.rhema_config()


def test_leader_election(daemons, shared_config, fault_report):
    backend, config = shared_config
    nodes = [daemons(f"n{i}", config=config,
                     overrides=OVERRIDES + [f"distributed.node.node_id=n{i}"])
             for i in (1, 2, 3)]
    for d in nodes:
        d.start()
    sampler = Sampler(nodes)
    sampler.start()
    epochs = []
    try:
        leader, epoch, _ = wait_new_leader(nodes, (), LEASE_S + 2)
        assert leader, "no leader after startup:\n" + "\n".join(d.log()[-2000:] for d in nodes)
        epochs.append(epoch)
        st, body = fenced(leader, epoch)
        assert st in (200, 201), body

        # 1. SIGKILL the leader
        t_kill = time.monotonic()
        leader.send(signal.SIGKILL)
        leader.wait(5)
        new, new_epoch, waited = wait_new_leader(nodes, (leader.name,), FAILOVER_MAX_S + 2)
        failover = time.monotonic() - t_kill if new else waited
        assert new, f"no new leader {waited:.2f} s after SIGKILL"
        assert failover <= FAILOVER_MAX_S, \
            f"failover took {failover:.2f} s (max {FAILOVER_MAX_S:.2f} s)"
        assert new_epoch > epoch
        st, body = fenced(new, epoch)
        assert st == 409 and body["error"]["code"] == "fenced", body
        st, body = fenced(new, new_epoch)
        assert st in (200, 201), body
        epochs.append(new_epoch)
        leader.start()  # back as a follower (the same node id, a new process)

        # 2. SIGSTOP the leader past its lease, then SIGCONT
        old, old_epoch = new, new_epoch
        sampler.paused.add(old.name)
        t_stop = time.monotonic()
        old.send(signal.SIGSTOP)
        try:
            new, new_epoch, waited = wait_new_leader(nodes, (old.name,), FAILOVER_MAX_S + 2)
            assert new, f"no new leader {waited:.2f} s after SIGSTOP"
            assert new_epoch > old_epoch
            time.sleep(max(0.0, LEASE_S + 0.5 - (time.monotonic() - t_stop)))
        finally:
            old.send(signal.SIGCONT)
        t_cont = time.monotonic()
        v = leader_of(old)
        assert v is not None and v[0] is False, f"resumed leader answered {v}"
        sampler.paused.discard(old.name)
        st, body = fenced(old, old_epoch)  # its own API fences its stale epoch
        assert st == 409 and body["error"]["code"] == "fenced", body
        st, body = fenced(new, old_epoch)
        assert st == 409 and body["error"]["code"] == "fenced", body
        time.sleep(2 * RENEW_S)
        after = [c for c in sampler.claims() if c[3] == old.name and c[1] >= t_cont]
        assert not after, f"the resumed node claimed leadership: {after}"
        epochs.append(new_epoch)

        # 3. SIGTERM the leader: a quick handover
        old = new
        t_term = time.monotonic()
        old.send(signal.SIGTERM)
        new, new_epoch, waited = wait_new_leader(nodes, (old.name,), LEASE_S + 2)
        handover = time.monotonic() - t_term
        assert new, f"no new leader {waited:.2f} s after SIGTERM"
        assert handover <= GRACEFUL_MAX_S, \
            f"graceful handover took {handover:.2f} s (max {GRACEFUL_MAX_S:.2f} s)"
        assert new_epoch > epochs[-1]
        epochs.append(new_epoch)
        assert old.wait(15) == 0
        time.sleep(0.5)
    finally:
        sampler.stop_ev.set()
        sampler.join(5)
    claims = sampler.check()
    assert epochs == sorted(set(epochs)), f"epochs not strictly increasing: {epochs}"
    assert len(claims) > 20, "the sampler saw too few claims to mean anything"
    fault_report(f"{backend}: failover after SIGKILL {failover:.2f} s "
                 f"(max {FAILOVER_MAX_S:.1f}), graceful handover {handover:.2f} s, "
                 f"epochs {epochs}, {sampler.rounds} sampling rounds, "
                 f"{len(sampler.samples)} answers")
