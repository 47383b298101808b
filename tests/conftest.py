"""Fixtures shared by the test modules; helpers live in tests/*_util.py and tests/emulator.py."""

from emulator import emulator, emulator_server, moto_s3  # noqa: F401  (emulator, S3 fixtures)
