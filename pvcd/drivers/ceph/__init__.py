"""The Ceph driver: every command pvcd runs against Ceph, and nothing else.

One module per concept, so a reader finds each rule in one place:
  values     what an operator may give (names, sizes, PG counts, OSD ids, flags, weights,
             devices), checked before any command runs
  records    what Ceph reports, as typed records (OSDs, pools, volumes, snapshots, PGs)
  parsers    Ceph's output and errors turned into records and domain errors
  client     running the tools (`ceph`, `rbd`, `rados`, `osdmaptool`), and the librados
             connection that answers the frequent read-only commands in-process
  driver     `CephDriver`: the operations (cluster flags, OSDs and their CRUSH place, pools,
             volumes, snapshots, PGs)
  removal    the rules and the procedure of a safe OSD removal (drain, stop, purge)
  devices, launchers, bluestore
             OSDs on this node's block devices: the device checks, starting and stopping OSD
             daemons, and `ceph-volume raw` (bluestore)

It knows nothing of ZooKeeper or of the controllers (`pvcd.controllers.storage` decides what to
do; this package does it and reports what Ceph says) and nothing of the lab.
"""
