#!/usr/bin/env python3
"""Redis's work for one lease renewal of many requests in flight, without the replica.

Usage: renew_cost.py PORT PREFIX POOL LEASES STATE take|renew

"take" takes LEASES in-flight slots of pool POOL with lua/select.lua calls of 12 requests (a
virtual clock moving 1 ms per call, so a key's rpm never holds a request back) and writes them to
the file STATE; "renew" sends the one lua/settle.lua call that src/store/leases.rs sends every
third of a lease, renewing every lease in STATE. bench/renew_cost.sh runs the renewal alone under callgrind (the count does
not move with the machine's load; BENCHMARKS.md, "Lease renewals"). Standard library only.
"""
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from budget_replay import Redis, functions  # noqa: E402


def main():
    port, prefix, pool, n = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    state, phase = sys.argv[5], sys.argv[6]
    r = Redis(port)
    base = '%s:{%s}' % (prefix, pool)
    names = functions(r)
    if phase == 'take':
        sec, usec = r.call('TIME')
        t0 = int(sec) * 1000 + int(usec) // 1000
        rng = random.Random(1)
        held, it = [], 0
        while len(held) < n:
            args = [str(t0 + it)]
            for _ in range(min(12, n - len(held))):
                args += [rng.randrange(2 ** 53), 'bucket', rng.randrange(100), 1051, 0]
            for line in r.call('FCALL', names['select'], 1, base, *args).split(b'\n'):
                reply = line.split(b' ')
                if reply[0] == b'key' and reply[6] != b'0':
                    held.append((reply[1].decode(), reply[6].decode()))
            it += 1
        with open(state, 'w') as f:
            f.write('%d\n' % (t0 + it))
            for key, lease in held:
                f.write('%s %s\n' % (key, lease))
        print('%d leases taken in %d select calls' % (len(held), it))
        return
    with open(state) as f:
        now = f.readline().strip()
        pairs = [line.split() for line in f]
    args = [now, 0]
    for key, lease in pairs:
        args += [key, lease]
    reply = r.call('FCALL', names['settle'], 1, base, *args)
    assert reply[0] == b'ok', reply
    print('%d leases renewed in one call' % len(pairs))


if __name__ == '__main__':
    main()
