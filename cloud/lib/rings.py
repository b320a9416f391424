"""Builds Swift's three rings (account, container, object) for the lab in one process.

`swift-ring-builder` would do the same in 15 invocations of about half a second each; this is
the same RingBuilder class, called once. Three replicas, one device per storage node, each in
its own zone: three devices in the account and container rings, four in the object ring. The
proxy answers once two of three (a quorum) have a write.

Why a fourth object device: each object PUT goes to three object servers, and each of the three
requests carries the update of one container replica (Swift's proxy spreads them so). With
three object devices and one server down there is no handoff: the PUT succeeds on two, and
the container replica whose update rode on the third never hears of the object. A listing
served by that replica misses it, and @tus/s3-store builds offsets and the final object from
listings of the parts (ListParts): with `object2` stopped, offsets went back and objects were
assembled wrong. With a fourth device the proxy sends the down server's request, container
update included, to the handoff, and every container replica lists every part.

    /usr/bin/python3 rings.py SWIFT_DIR ACCOUNT_PORTS CONTAINER_PORTS OBJECT_PORTS
    (each PORTS: comma-separated, one per node, in node order)
"""
import os
import sys

from swift.common.ring import RingBuilder


def main():
    swift_dir = sys.argv[1]
    for kind, ports in zip(("account", "container", "object"), sys.argv[2:5]):
        # part_power 6: 64 partitions, plenty for three devices; a small ring loads fast.
        builder = RingBuilder(6, 3, 1)
        for i, port in enumerate(ports.split(","), start=1):
            builder.add_dev({
                "id": i - 1, "region": 1, "zone": i, "ip": "127.0.0.1",
                "port": int(port), "device": "d%d" % i, "weight": 100.0,
                "meta": "",
            })
        builder.rebalance()
        builder.save(os.path.join(swift_dir, kind + ".builder"))
        builder.get_ring().save(os.path.join(swift_dir, kind + ".ring.gz"))


if __name__ == "__main__":
    main()
