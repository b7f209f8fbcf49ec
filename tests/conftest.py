"""Fixtures live in plugin modules so that each area owns its own file."""

pytest_plugins = [
    "tests.data_fixtures",
    "tests.stack_fixtures",
    "tests.shard_fixtures",
    "tests.train_fixtures",
    "tests.quantize_fixtures",
]
