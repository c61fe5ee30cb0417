"""The domain's exception hierarchy.

Every layer raises these; the API maps them to HTTP in one place (`pvcd.api.base`). A `PvcError`
message is shown to the operator as is, so it says what was wrong and what is allowed.
"""


class PvcError(Exception):
    """Base of every error pvcd reports to an operator."""


class InvalidValue(PvcError):
    """A value given by the operator (API, CLI, config) is not acceptable."""


class NotFound(PvcError):
    """The named object does not exist."""


class Conflict(PvcError):
    """The write lost a compare-and-set race or would collide with an existing object."""


class BackendError(PvcError):
    """A host or cluster backend (ZooKeeper, libvirt, netlink, Ceph, ...) failed."""


class StateUnavailable(BackendError):
    """ZooKeeper did not answer (connection lost or suspended, no answer in time): nothing is
    wrong with the object at hand, and a write's outcome is unknown. Controllers retry later
    instead of recording a failure."""


class ConfigError(PvcError):
    """The node's configuration file is invalid; the message names the file and the key."""
