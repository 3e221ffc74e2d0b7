"""Device-name reservations: kept per instance until attached, released, or too old."""

from __future__ import annotations

from handlers.volumes import RESERVATION_SECONDS, Reservations, bdm_primitive

INSTANCE = "0d6f3f4e-8a5b-4c1e-9f7a-3b2c1d0e9f8a"
VOLUME = "5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d"
OTHER = "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a"


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_reservation_is_kept_per_instance_until_released() -> None:
    """What one instance reserved is not another's; release forgets only that volume."""
    held = Reservations(Clock())
    held.reserve(INSTANCE, VOLUME, "vdb")
    held.reserve(INSTANCE, OTHER, "vdc")

    assert {VOLUME: "vdb", OTHER: "vdc"} == {v: r.target for v, r in held.of(INSTANCE).items()}
    assert {} == held.of(OTHER)
    held.release(INSTANCE, VOLUME)
    assert [OTHER] == list(held.of(INSTANCE))


def test_a_reservation_nobody_attached_is_forgotten_after_its_time() -> None:
    """Without nova's database the only sign of an attach that never came is time."""
    clock = Clock()
    held = Reservations(clock)
    held.reserve(INSTANCE, VOLUME, "vdb")

    clock.now += RESERVATION_SECONDS - 1
    assert [VOLUME] == list(held.of(INSTANCE))
    clock.now += 1
    assert {} == held.of(INSTANCE)


def test_the_reservation_answer_is_a_block_device_mapping_nova_accepts() -> None:
    """nova's own class reads the primitive reserve_block_device_name returns."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nova's imports warn about eventlet and friends
        from nova import objects
        objects.register_all()
    primitive = bdm_primitive({"device_type": None, "tag": "data"}, INSTANCE, VOLUME, "sdb",
                               "scsi", OTHER)

    bdm = objects.BlockDeviceMapping.obj_from_primitive(primitive)

    assert ("/dev/sdb", "scsi", "disk", "data", VOLUME, INSTANCE, OTHER) == (
        bdm.device_name, bdm.disk_bus, bdm.device_type, bdm.tag, bdm.volume_id,
        bdm.instance_uuid, bdm.uuid)
    assert bdm.is_volume and not bdm.delete_on_termination


def test_a_terminated_instance_s_reservations_all_go_and_no_other_s() -> None:
    held = Reservations(Clock())
    held.reserve(INSTANCE, VOLUME, "vdb")
    held.reserve(OTHER, VOLUME, "vdb")

    held.forget(INSTANCE)

    assert ({}, ["vdb"]) == (held.of(INSTANCE), [r.target for r in held.of(OTHER).values()])
