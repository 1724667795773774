# Our own tests use the toolkit exactly as downstream projects do; pytester tests the plugin.
pytest_plugins = ["abe_redis_testing", "pytester"]
