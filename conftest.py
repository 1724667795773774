# Our own tests use the toolkit exactly as downstream projects do.
pytest_plugins = ["abe_redis_testing"]
