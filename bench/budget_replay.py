#!/usr/bin/env python3
"""Replays what one replica at c=64 asks of Redis for a budgeted pool, without the replica.

Usage: budget_replay.py PORT PREFIX POOL ITERATIONS [off] [evalsha] [selects] [hints] [perms=N]

Sends ITERATIONS calls of lua/select.lua (12 requests each, as the replica's coalesced selects
carry at c=64) and, every 10 calls, one lua/report_batch.lua carrying those requests' successes
and ends (lease freed, 1,000 tokens less than reserved), like the replica's success batch.
With "off" the pool's budgets flag is taken as 0 (meta's `budgets` and the one packed in `sel`)
and no ends are sent: the same calls without budgets; with "selects", no success batch is sent;
with "perms=N", the calls carry a virtual clock (below); with "hints", each batch carries
the hint the bench's mock sends on every answer (10,000 requests a minute, 9,999 left) for every
key it names. The scripts run as the replica runs them: functions of the keygate library the
replica loaded (`FCALL`), or with "evalsha" as lua/lib.lua plus the script by `EVALSHA` (what
a Redis without Functions runs). The pool must exist (a replica synced it). bench/budget_replay.sh runs it
against a redis-server under callgrind, so the count of Redis instructions per request does not
move with the machine's load (BENCHMARKS.md, "Budgets: the select call's Redis work").
Standard library only: a minimal RESP2 client.
"""
import os
import random
import socket
import struct
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')


class Redis:
    def __init__(self, port):
        self.s = socket.create_connection(('127.0.0.1', port))
        self.f = self.s.makefile('rb')

    def call(self, *args):
        out = [b'*%d\r\n' % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b'$%d\r\n%s\r\n' % (len(a), a))
        self.s.sendall(b''.join(out))
        return self.read()

    def read(self):
        line = self.f.readline()
        kind, rest = line[:1], line[1:-2]
        if kind == b'+':
            return rest
        if kind == b'-':
            raise RuntimeError(rest.decode())
        if kind == b':':
            return int(rest)
        if kind == b'$':
            n = int(rest)
            if n < 0:
                return None
            data = self.f.read(n + 2)
            return data[:-2]
        if kind == b'*':
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise RuntimeError('bad reply: %r' % line)


def script(name):
    """The EVALSHA form of lua/<name>, as src/store/scripts.rs builds it."""
    with open(os.path.join(ROOT, 'lua', 'lib.lua')) as lib, \
            open(os.path.join(ROOT, 'lua', name)) as body:
        text = lib.read() + '\nbegin(KEYS)\n' + body.read()
    if name == 'select.lua':  # it defines select_call, the call (src/store/scripts.rs SOURCES)
        text += '\nreturn select_call(KEYS, ARGV)\n'
    return text


def functions(r):
    """script name -> function name, from the keygate library Redis holds (None: none)."""
    libs = r.call('FUNCTION', 'LIST', 'LIBRARYNAME', 'keygate_*')
    if not libs:
        return None
    names = {}
    lib = dict(zip(libs[0][::2], libs[0][1::2]))
    for f in lib[b'functions']:
        name = dict(zip(f[::2], f[1::2]))[b'name'].decode()
        names[name.split('_', 2)[2]] = name
    return names


def main():
    port, prefix, pool, iters = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    off = 'off' in sys.argv[5:]
    hints = 'hints' in sys.argv[5:]
    r = Redis(port)
    base = '%s:{%s}' % (prefix, pool)
    if off:
        # The select call reads the pool's budgets flag from meta's sel (lua/lib.lua SEL_FMT:
        # six doubles, then the canary group's name): rewritten with the flag at 0.
        r.call('HSET', base + ':meta', 'budgets', '0')
        sel = r.call('HGET', base + ':meta', 'sel')
        if sel:
            head = list(struct.unpack('<6d', sel[:48]))
            head[2] = 0.0
            r.call('HSET', base + ':meta', 'sel', struct.pack('<6d', *head) + sel[48:])
    names = None if 'evalsha' in sys.argv[5:] else functions(r)
    if names:
        select, report, how = names['select'], names['report_batch'], 'FCALL'
    else:
        select = r.call('SCRIPT', 'LOAD', script('select.lua')).decode()
        report = r.call('SCRIPT', 'LOAD', script('report_batch.lua')).decode()
        how = 'EVALSHA'
    # "perms=N": a virtual clock passed to every call (ARGV[1]) that moves 1 ms every N select
    # calls from the server's time at the start, so how many keys a draw finds a few ms from
    # their slot is set by N (at c=64 about 2 calls a millisecond) rather than by how slowly
    # Redis runs under callgrind; 0 (default): each call reads the server's clock.
    per_ms = 0
    for a in sys.argv[5:]:
        if a.startswith('perms='):
            per_ms = int(a.split('=', 1)[1])
    t0 = 0
    if per_ms > 0:
        sec, usec = r.call('TIME')
        t0 = int(sec) * 1000 + int(usec) // 1000
    rng = random.Random(1)
    ends, successes, picked, hinted = [], {}, 0, 0
    for it in range(iters):
        clock = str(t0 + it // per_ms) if per_ms > 0 else '0'
        args = [clock]
        for _ in range(12):
            args += [rng.randrange(2 ** 53), 'bucket', rng.randrange(100), 1051, 0]
        for line in r.call(how, select, 1, base, *args).split(b'\n'):
            reply = line.split(b' ')
            if reply[0] == b'key':
                picked += 1
                key, lease = reply[1].decode(), reply[6]
                ends.append((key, lease))
                successes[key] = successes.get(key, 0) + 1
        if it % 10 == 9:
            a = [clock, len(successes)]
            for key, n in successes.items():
                a += [key, n, 200, 1]
            if hints and not off:
                # What the bench's mock says on every answer (src/mock/v1.rs): the newest
                # answer's hints of each key, as the replica's batch carries them.
                a.append(len(successes))
                hinted += len(successes)
                for key in successes:
                    a += [key, 1, 9999, -1, -1, -1, 10000, -1]
            else:
                a.append(0)
            if not off:
                for key, lease in ends:
                    a += [key, lease, -1000]
            if 'selects' not in sys.argv[5:]:
                r.call(how, report, 1, base, *a)
            ends, successes = [], {}
    print('%s: requests %d of %d picked a key, %d provider hints sent'
          % (how, picked, iters * 12, hinted))


if __name__ == '__main__':
    main()
