"""The project's exception tree: every failure a handler or the wire can name."""

from __future__ import annotations

from typing import Any


class WorkerError(Exception):
    """Base of every error this worker raises on purpose."""

    #: Expected errors are logged as warnings without a traceback.
    expected = True
    #: The module name put in a wire ``failure``; oslo clients read it.
    wire_module = "worker.errors"
    #: The class name put in a wire ``failure``; None: the class's own.
    wire_name: str | None = None
    #: Raised before anything changed: the message need not be journaled.
    changes_nothing = False

    def __init__(self, message: str = "", **kwargs: Any) -> None:
        super().__init__(message)
        self.message = message
        self.kwargs = kwargs


class ConfigError(WorkerError):
    """An option has a value the worker cannot use."""


# --- messages that cannot be served --------------------------------------


class BadMessage(WorkerError):
    """A message that is rejected (not requeued) without running anything."""


class MessageTooLarge(BadMessage):
    """The body exceeds the configured size limit."""


class InvalidEnvelope(BadMessage):
    """The body is not JSON, or not the oslo envelope or message shape."""


class InvalidArguments(BadMessage):
    """The arguments do not satisfy the method's JSON Schema."""


class BadSignature(BadMessage):
    """A signature is required and missing or wrong."""


class NoSuchMethod(BadMessage):
    """The method is not in the worker's table (oslo's NoSuchMethod)."""

    wire_module = "oslo_messaging.rpc.dispatcher"

    def __init__(self, method: str) -> None:
        super().__init__(f"Endpoint does not support RPC method {method}")
        self.method = method


class UnsupportedVersion(BadMessage):
    """The message's version is not served by this API (oslo's UnsupportedVersion)."""

    wire_module = "oslo_messaging.rpc.dispatcher"

    def __init__(self, version: str, method: str | None = None) -> None:
        super().__init__(
            f"Endpoint does not support RPC version {version}. Attempted method: {method}"
        )
        self.version = version
        self.method = method


# --- instances and the hypervisor -----------------------------------------

#: The module of nova's exceptions: an error of ours that nova has under the same name is
#: sent as nova's, so an oslo client with allowed_remote_exmods=['nova.exception'] raises
#: the real nova exception (oslo rebuilds it from the class name and the message).
NOVA = "nova.exception"


class InstanceNotFound(WorkerError):
    """No domain with that UUID exists on this host."""

    changes_nothing = True
    wire_module = NOVA

    def __init__(self, uuid: str) -> None:
        super().__init__(f"Instance {uuid} could not be found.")  # nova's own wording
        self.uuid = uuid


class InstanceInvalidState(WorkerError):
    """The domain's state does not allow the verb."""

    changes_nothing = True
    wire_module = NOVA


class NotSupported(WorkerError):
    """This worker cannot do what the message asks (a hypervisor type, a device kind)."""

    wire_module = NOVA


class ImageError(WorkerError):
    """A base image is missing or unreadable, or a disk could not be made from it."""


# --- storage, under nova's names where nova has one (its client branches on them) ----


class ImageNotFound(ImageError):
    """No image with that id in images_path."""

    changes_nothing = True
    wire_module = NOVA


class ImageUnacceptable(ImageError):
    """The image exists but cannot be used (format, backing file, symlink out)."""

    changes_nothing = True
    wire_module = NOVA


class FlavorDiskSmallerThanImage(ImageError):
    """root_gb is smaller than the image's virtual size."""

    changes_nothing = True
    wire_module = NOVA


class InvalidVolume(WorkerError):
    """connection_info names a volume this worker cannot or may not open."""

    changes_nothing = True
    wire_module = NOVA


class InvalidDevicePath(WorkerError):
    """A device name that is not a disk target (/dev/vdb, /dev/sdc, ...)."""

    changes_nothing = True
    wire_module = NOVA


class DevicePathInUse(WorkerError):
    """The device name asked for is taken on the instance."""

    changes_nothing = True
    wire_module = NOVA


class DeviceDetachFailed(WorkerError):
    """The guest did not let go of a device after every attempt."""

    wire_module = NOVA


# --- consoles and rescue, under nova's names ------------------------------


class ConsoleTypeInvalid(WorkerError):
    """A console type this verb does not serve (get_vnc_console of anything but novnc)."""

    changes_nothing = True
    wire_module = NOVA

    def __init__(self, console_type: object) -> None:
        super().__init__(f"Invalid console type {console_type}")  # nova's wording


class ConsoleTypeUnavailable(WorkerError):
    """The instance has no console of that type (or it does not listen)."""

    changes_nothing = True
    wire_module = NOVA

    def __init__(self, console_type: object) -> None:
        super().__init__(f"Unavailable console type {console_type}.")  # nova's wording


class InstanceNotRescuable(WorkerError):
    """The instance cannot be rescued (no image to rescue it from)."""

    changes_nothing = True
    wire_module = NOVA

    def __init__(self, uuid: str, reason: str) -> None:
        super().__init__(f"Instance {uuid} cannot be rescued: {reason}")  # nova's wording


class InsufficientStorage(WorkerError):
    """Not enough free space where the worker would write (checked before writing)."""

    changes_nothing = True


class UnsafePath(WorkerError):
    """A path built from a message would leave the worker's directories."""


class HypervisorError(WorkerError):
    """libvirt refused or failed a call for a reason other than a lost connection."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message, code=code)
        self.code = code


class HypervisorUnavailable(WorkerError):
    """The libvirt connection is lost or cannot be opened."""


class OperationTimeout(WorkerError):
    """A verb did not reach its target state in time."""


class HostQueueTaken(WorkerError):
    """Another worker already consumes this host's queue (two workers with one host name)."""

    expected = False


class TopologyMismatch(WorkerError):
    """The broker holds a queue or exchange of ours with other flags (406 PRECONDITION_FAILED)."""

    expected = False


class JournalUnavailable(WorkerError):
    """The journal cannot be written or read (disk full, read-only, I/O error)."""

    expected = False


class PublishError(WorkerError):
    """The broker did not confirm a publish in time, or refused it."""

    expected = False


# --- networks, under nova's names (nova.exception) --------------------------------------


class InvalidInput(WorkerError):
    """A VIF, port, MAC or interface name of a wrong shape (nova's InvalidInput)."""

    changes_nothing = True
    wire_module = NOVA

    def __init__(self, reason: str) -> None:
        super().__init__(f"Invalid input received: {reason}")  # nova's wording
        self.reason = reason


class NetworkNotFound(WorkerError):
    """A network id or label that bridge_mappings does not map (nova's NetworkNotFound)."""

    changes_nothing = True
    wire_module = NOVA


class NetworkNotFoundForBridge(NetworkNotFound):
    """A bridge that does not exist on this host, and manage_bridges is off."""


class PortNotFound(WorkerError):
    """No interface of the instance has that port id."""

    changes_nothing = True
    wire_module = NOVA


class InterfaceAttachFailed(WorkerError):
    """libvirt did not take the interface (nova's InterfaceAttachFailed)."""

    wire_module = NOVA


class InterfaceDetachFailed(WorkerError):
    """The guest did not let go of an interface (nova's InterfaceDetachFailed)."""

    wire_module = NOVA


# --- live migration, under nova's names (nova.exception) --------------------------------


class MigrationPreCheckError(WorkerError):
    """A host cannot take part in a live migration (nova's MigrationPreCheckError)."""

    changes_nothing = True
    wire_module = NOVA

    def __init__(self, reason: str) -> None:
        super().__init__(f"Migration pre-check error: {reason}")  # nova's wording
        self.reason = reason


class InvalidCPUInfo(WorkerError):
    """The destination's CPU cannot run the source's guests (nova's InvalidCPUInfo)."""

    changes_nothing = True
    wire_module = NOVA

    def __init__(self, reason: str) -> None:
        super().__init__(f"Unacceptable CPU info: {reason}")
        self.reason = reason


class InvalidSharedStorage(WorkerError):
    """A live migration without block copy, of disks the hosts do not share."""

    changes_nothing = True
    wire_module = NOVA

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path} is not on shared storage: {reason}")
        self.reason = reason


class InvalidLocalStorage(WorkerError):
    """A block migration of disks the hosts share (nova's InvalidLocalStorage)."""

    changes_nothing = True
    wire_module = NOVA

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path} is not on local storage: {reason}")
        self.reason = reason


class MigrationError(WorkerError):
    """A live migration failed after its checks (nova's MigrationError)."""

    wire_module = NOVA

    def __init__(self, reason: str) -> None:
        super().__init__(f"Migration error: {reason}")
        self.reason = reason


# --- calls to other hosts' workers --------------------------------------------------------


class PeerError(WorkerError):
    """A call to another host's worker did not give an answer."""


class PeerTimeout(PeerError):
    """The other host's worker did not answer in time (oslo's MessagingTimeout)."""

    wire_module = "oslo_messaging.exceptions"
    wire_name = "MessagingTimeout"


class PeerFailed(PeerError):
    """The other host's worker answered with a failure: sent on under its own class.

    A conductor calling the destination, which called the source, sees the
    source's refusal (InvalidSharedStorage, say) as nova would have raised it.
    """

    def __init__(self, host: str, method: str, failure: dict[str, Any]) -> None:
        message = str(failure.get("message") or "")
        super().__init__(message)
        self.host = host
        self.method = method
        name = str(failure.get("class") or "RemoteError")
        # A class name only: it goes on the wire as this error's class.
        self.wire_name = name if name.isidentifier() else "RemoteError"
        self.wire_module = str(failure.get("module") or "worker.errors")[:100]
