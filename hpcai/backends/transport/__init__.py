"""Where scheduler commands run and run directories live: this machine, or a login node over SSH."""

from hpcai.backends.transport.base import CommandResult, Transport
from hpcai.backends.transport.local import LocalTransport

__all__ = ["CommandResult", "LocalTransport", "Transport"]
