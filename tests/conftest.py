"""Fixtures live in plugin modules so that each area owns its own file."""

pytest_plugins = ["tests.stack_fixtures", "tests.data_fixtures"]
