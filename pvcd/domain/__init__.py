"""Pure cluster rules: states, records, placement, the VM move rule. No I/O, no imports of
ZooKeeper, Tornado, libvirt or any other pvcd layer."""
