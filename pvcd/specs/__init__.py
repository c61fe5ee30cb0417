"""Desired-state documents checked with one set of rules, wherever they are read.

The API checks every document before it writes it; the node daemons check every document again
before they act on it, because anything that can reach ZooKeeper can write desired state, and
only what passes the API's own rules may change a host. So each rule lives here once and both
sides call it:
  vms       a VM document: its domain XML (`pvcd.vmxml`), its identity, its desired state
  networks  a client network, its static leases and its ACLs
  storage   a storage request's operation and arguments
A daemon that finds an invalid document refuses it: nothing changes on the host, and the reason
is recorded where the object's state is reported (docs/security.md, "Daemons re-validate").
"""
