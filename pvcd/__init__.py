"""pvcd: a hyperconverged virtualization cluster manager (one daemon per hypervisor node)."""

__version__ = "0.1.0"
