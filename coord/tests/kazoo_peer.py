#!/usr/bin/env python3
"""A kazoo peer for sluice's ZooKeeper interop tests (coord/tests/zookeeper.rs).

    kazoo_peer.py HOSTS SESSION_TIMEOUT_SECONDS

Reads one command per line on stdin and writes one line per answer or event on stdout:

    lock PATH IDENT      take kazoo Lock(PATH, IDENT) in a thread; "locked PATH" once held
    unlock PATH          release it; "unlocked PATH"
    trylock PATH         a non-blocking acquire of a second Lock; "trylock true|false"
    elect PATH IDENT     run kazoo Election(PATH, IDENT) in a thread; "leading PATH" once leading
    resign PATH          return from the leader function; "resigned PATH"
    contenders PATH      "contenders <json list>" from Election(PATH).contenders()
    quit                 stop the client (deleting this session's nodes) and exit
"""

import json
import sys
import threading

from kazoo.client import KazooClient


def main():
    hosts, timeout = sys.argv[1], float(sys.argv[2])
    zk = KazooClient(hosts=hosts, timeout=timeout)
    zk.start()
    out = threading.Lock()

    def say(*words):
        with out:
            print(*words, flush=True)

    locks = {}
    elections = {}
    say("ready", "%x" % zk.client_id[0])
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd, *args = line.split()
        if cmd == "lock":
            path, ident = args
            lock = zk.Lock(path, ident)
            locks[path] = lock

            def hold(lock=lock, path=path):
                lock.acquire()
                say("locked", path)

            threading.Thread(target=hold, daemon=True).start()
        elif cmd == "unlock":
            locks.pop(args[0]).release()
            say("unlocked", args[0])
        elif cmd == "trylock":
            lock = zk.Lock(args[0], "try")
            got = lock.acquire(blocking=False)
            if got:
                lock.release()
            say("trylock", "true" if got else "false")
        elif cmd == "elect":
            path, ident = args
            done = threading.Event()
            election = zk.Election(path, ident)
            elections[path] = done

            def lead(path=path, done=done):
                say("leading", path)
                done.wait()

            def run(election=election, path=path, lead=lead):
                election.run(lead)
                say("resigned", path)

            threading.Thread(target=run, daemon=True).start()
        elif cmd == "resign":
            elections.pop(args[0]).set()
        elif cmd == "contenders":
            say("contenders", json.dumps(zk.Election(args[0]).contenders()))
        elif cmd == "quit":
            break
    zk.stop()
    zk.close()


if __name__ == "__main__":
    main()
